"""The plan's points: degrees, scored candidates, the Pareto front with the plan on it, and the
per-stage and per-unit costs of the chosen layout."""

from __future__ import annotations

import math
from collections.abc import Callable

from ppplan.partitioner.costs import Costs, Evaluation
from ppplan.partitioner.plan import Candidate, Degrees, StageMemory, StagePlan, StageTimes, UnitCost
from ppplan.partitioner.problem import stage_bounds
from ppplan.partitioner.space import GIB, Layout

__all__ = [
    "MAX_CANDIDATES",
    "candidate",
    "candidates",
    "degrees_of",
    "finite_ms",
    "kv_capacity_tokens",
    "pareto_points",
    "stage_detail",
    "stage_plan",
    "unit_costs",
]

MAX_CANDIDATES = 300
"""Most scored configurations a plan lists (``candidates``)."""


def degrees_of(lay: Layout) -> Degrees:
    """The plan's degrees of ``lay`` (attention TP = the stage's GPUs / attention DP ranks)."""
    return Degrees(
        tp=lay.tp // lay.attention_dp,
        pp=lay.pp,
        replicas=lay.replicas,
        micro_batches=lay.micro_batches,
        micro_batch_size=lay.micro_batch_size,
        gpus_used=lay.gpus,
        ep=lay.ep,
        attention_dp=lay.attention_dp,
    )


def finite_ms(x: float) -> float | None:
    return x * 1e3 if math.isfinite(x) else None


def candidate(e: Evaluation, chosen: Evaluation | None = None) -> Candidate:
    """``e`` as a plan's point; a layout a request rate overloads (no steady TPOT at that rate) shows
    its full-batch TPOT and what it sustains, marked as missing the SLOs."""
    tpot = e.tpot if math.isfinite(e.tpot) else e.cycle
    return Candidate(
        degrees=degrees_of(e.layout),
        partition=list(e.sizes) if e.sizes else None,
        throughput_tokens_per_s=e.throughput,
        throughput_per_gpu=e.per_gpu,
        tpot_ms=tpot * 1e3,
        ttft_ms=e.ttft * 1e3,
        slo_met=e.slo_met and math.isfinite(e.tpot),
        tokens_per_s_per_user=1.0 / tpot if tpot > 0 else None,
        ttft_p90_ms=finite_ms(e.ttft_p90) if e.loaded else None,
        chosen=chosen is not None and e.layout == chosen.layout,
    )


def pareto_points(front: list[Evaluation], best: Evaluation) -> list[Candidate]:
    """The front with the plan on it: the plan replaces its fewer-replica twin (same per-GPU figures)
    or, when the SLOs pushed it off the front, joins it in TPOT order."""
    lay = best.layout
    twin = lambda e: (e.layout.tp, e.layout.pp, e.layout.sequences) == (lay.tp, lay.pp, lay.sequences)  # noqa: E731
    pts = [best if twin(e) else e for e in front]
    if best not in pts:
        pts = sorted([*pts, best], key=lambda e: e.tpot)
    return [candidate(e, best) for e in pts]


def candidates(evals: list[Evaluation], best: Evaluation) -> list[Candidate]:
    """Up to MAX_CANDIDATES exactly scored configurations (the best per-GPU throughput first)."""
    seen: set[Layout] = set()
    out: list[Evaluation] = []
    for e in sorted((e for e in evals if e.feasible), key=lambda e: -e.per_gpu):
        if e.layout not in seen:
            seen.add(e.layout)
            out.append(e)
    return [candidate(e, best) for e in out[:MAX_CANDIDATES]]


def stage_plan(
    costs: Costs,
    lay: Layout,
    k: int,
    layers: tuple[int, int],
    *,
    devices: list[int],
    node: int,
    send: float,
    send_busy: float,
    gpu: str | None = None,
) -> StagePlan:
    """Stage ``k`` of ``lay`` holding decoder ``layers`` (first, last) with ``costs``'s GPU kind: units,
    times (ms), memory (GiB). ``send`` and ``send_busy`` are its boundary's seconds for a decode
    micro-batch and for the busy tokens; ``gpu`` names the stage's kind on a mixed cluster."""
    st = costs.setup
    t, p, b = lay.tp, lay.pp, lay.micro_batch_size
    a, z = layers
    lo = 0 if k == 0 else a + 1
    hi = z + 1 if k < p - 1 else st.layers + 1
    units = slice(lo, hi + 1)
    dec, pre = costs.decode(t, b), costs.prefill(t)
    busy = float(dec[units].sum() + (b / st.output_tokens) * pre[units].sum()) + send_busy
    weights = float(costs.weights(t, p)[units].sum())
    kvb = float(costs.kv_bytes(t, lay.sequences)[units].sum())
    wsb = float(costs.workspace(t, lay.sequences)[units].max())
    per_seq = float(costs.kv_per_sequence(t)[units].sum())
    total = weights + kvb + wsb + st.reserve_bytes
    room = st.usable_bytes - weights - wsb - st.reserve_bytes
    desc = costs.cm.describe()
    on = f" on {gpu}" if gpu else ""
    return StagePlan(
        index=k,
        units=(lo, hi),
        decoder_layers=(a, z),
        num_decoder_layers=z - a + 1,
        has_embedding=k == 0,
        has_lm_head=k == p - 1,
        modules=[m for u in costs.profile.units[units] for m in u.modules],
        devices=devices,
        node=node,
        gpu=gpu,
        times=StageTimes(
            decode_ms=float(dec[units].sum()) * 1e3,
            prefill_ms=float(pre[units].sum()) * 1e3,
            send_ms=send * 1e3,
            busy_ms=busy * 1e3,
            source=f"{desc['time_source']}{on} ({costs.profile_label}, {desc['cost_model']})",
        ),
        memory=StageMemory(
            weights_gib=weights / GIB,
            kv_cache_gib=kvb / GIB,
            workspace_gib=wsb / GIB,
            reserve_gib=st.reserve_bytes / GIB,
            total_gib=total / GIB,
            limit_gib=st.usable_bytes / GIB,
            free_gib=(st.usable_bytes - total) / GIB,
        ),
        # tokens of average sequences: with sliding-window layers a sequence costs less than
        # tokens × per-token bytes, so tokens = sequences × tokens each, not room / per-token bytes
        kv_capacity_tokens=int(room / per_seq * st.kv_tokens) if per_seq > 0 else 0,
        kv_capacity_sequences=room / per_seq if per_seq > 0 else math.inf,
    )


def stage_detail(costs: Costs, lay: Layout, sizes: tuple[int, ...] | list[int]) -> list[StagePlan]:
    """Every stage of ``lay`` cut into ``sizes`` decoder layers: units, devices, times (ms), memory (GiB)."""
    t, p, b = lay.tp, lay.pp, lay.micro_batch_size
    inter = costs.inter_node(lay)
    tokens = costs.busy_tokens(lay)
    return [
        stage_plan(
            costs,
            lay,
            k,
            layers,
            devices=list(range(k * t, k * t + t)),
            node=k * t // costs.setup.gpus_per_node,
            send=costs.cm.send_time(b, inter[k]) if k < p - 1 else 0.0,
            send_busy=costs.cm.send_time(tokens, inter[k]) if k < p - 1 else 0.0,
        )
        for k, layers in enumerate(stage_bounds(sizes))
    ]


def unit_costs(
    costs: Costs, best: Evaluation, stages: list[StagePlan], costs_of: Callable[[StagePlan], Costs] | None = None
) -> list[UnitCost]:
    """Per planning unit of ``best`` cut into ``stages``: times (ms) and bytes (GiB) on its stage's GPU
    kind (``costs_of(stage)``; ``costs`` for every stage when not given)."""
    lay = best.layout
    out = []
    for s in stages:
        c = costs if costs_of is None else costs_of(s)
        dec, pre = c.decode(lay.tp, lay.micro_batch_size), c.prefill(lay.tp)
        w, kv = c.weights(lay.tp, lay.pp), c.kv_bytes(lay.tp, lay.sequences)
        for u in range(s.units[0], s.units[1] + 1):
            unit = costs.profile.units[u]
            name = "embedding" if unit.kind == "embed" else "lm_head" if unit.kind == "head" else f"layer {u - 1}"
            out.append(
                UnitCost(
                    index=u,
                    name=name,
                    kind=unit.kind,
                    stage=s.index,
                    decode_ms=float(dec[u]) * 1e3,
                    prefill_ms=float(pre[u]) * 1e3,
                    weights_gib=float(w[u]) / GIB,
                    kv_cache_gib=float(kv[u]) / GIB,
                )
            )
    return out


def kv_capacity_tokens(costs: Costs, e: Evaluation) -> int:
    """KV tokens per replica the tightest stage of ``e``'s cut holds with all its free memory: the
    figure the plan's stages report (``e`` must carry its cut)."""
    assert e.sizes is not None
    return min(s.kv_capacity_tokens for s in stage_detail(costs, e.layout, e.sizes))

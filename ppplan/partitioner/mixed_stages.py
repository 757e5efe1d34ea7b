"""The stages of a mixed-cluster pipeline on their own GPU kinds, the engines' even cuts on the same
stages, and the per-unit costs (see :mod:`partitioner.mixed_plan`).

Global GPU ids and node indices follow the groups in cluster order (group 0's nodes first); within
a group, stage q runs on its node q // stages_per_node, GPUs slot·tp … of that node
(:class:`partitioner.hetero_problem.StagePlace`), which is what the exports read
(:mod:`partitioner.exports_layout`).
"""

from __future__ import annotations

import math

from ppplan.partitioner.costs import Evaluation
from ppplan.partitioner.hetero import HeteroCut, placement
from ppplan.partitioner.mixed_costs import MixedCosts
from ppplan.partitioner.plan import Baseline, BaselineStage, StageMemory, StagePlan, StageTimes, UnitCost
from ppplan.partitioner.problem import stage_bounds
from ppplan.partitioner.space import GIB

__all__ = ["mixed_baseline", "mixed_stages", "mixed_units"]


def _gpu_offsets(costs: MixedCosts) -> tuple[list[int], list[int]]:
    """(first global GPU id, first global node index) of every group, in cluster order."""
    gpus, nodes, g0, n0 = [], [], 0, 0
    for g in costs.cluster.groups:
        gpus.append(g0)
        nodes.append(n0)
        g0 += g.count
        n0 += g.nodes
    return gpus, nodes


def mixed_stages(costs: MixedCosts, best: Evaluation, cut: HeteroCut) -> list[StagePlan]:
    """Every stage of ``cut`` on its own kind: units, global devices and node, times (ms, its
    kind's), memory (GiB, against its kind's limit)."""
    lay = best.layout
    t, p, b, seqs = lay.tp, lay.pp, lay.micro_batch_size, lay.sequences
    st0 = costs.setup
    first_gpu, first_node = _gpu_offsets(costs)
    decode_sends = placement(costs.hetero_problem(lay, tokens=float(b)), cut.order, cut.counts)[1]
    stages = []
    for k, (a, z) in enumerate(stage_bounds(cut.sizes)):
        place = cut.places[k]
        kc = costs.kinds[place.gpu]
        st, grp = kc.setup, costs.cluster.groups[place.group]
        lo, hi = (0 if k == 0 else a + 1), (z + 1 if k < p - 1 else st0.layers + 1)
        units = slice(lo, hi + 1)
        dec, pre = kc.decode(t, b), kc.prefill(t)
        weights = float(kc.weights(t, p)[units].sum())
        kvb = float(kc.kv_bytes(t, seqs)[units].sum())
        wsb = float(kc.workspace(t, seqs)[units].max())
        per_seq = float(kc.kv_per_sequence(t)[units].sum())
        total = weights + kvb + wsb + st.reserve_bytes
        room = st.usable_bytes - weights - wsb - st.reserve_bytes
        busy = float(dec[units].sum() + (b / st.output_tokens) * pre[units].sum()) + cut.stage_sends[k]
        dev0 = first_gpu[place.group] + place.node * grp.gpus_per_node + place.slot * t
        desc = kc.cm.describe()
        stages.append(
            StagePlan(
                index=k,
                units=(lo, hi),
                decoder_layers=(a, z),
                num_decoder_layers=z - a + 1,
                has_embedding=k == 0,
                has_lm_head=k == p - 1,
                modules=[m for u in costs.profile.units[units] for m in u.modules],
                devices=list(range(dev0, dev0 + t)),
                node=first_node[place.group] + place.node,
                gpu=place.gpu,
                times=StageTimes(
                    decode_ms=float(dec[units].sum()) * 1e3,
                    prefill_ms=float(pre[units].sum()) * 1e3,
                    send_ms=decode_sends[k] * 1e3,
                    busy_ms=busy * 1e3,
                    source=f"{desc['time_source']} on {place.gpu} ({costs.profile.label}, {desc['cost_model']})",
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
                kv_capacity_tokens=int(room / per_seq * st.kv_tokens) if per_seq > 0 else 0,
                kv_capacity_sequences=room / per_seq if per_seq > 0 else math.inf,
            )
        )
    return stages


def _gain(ours: float, theirs: float) -> float:
    """ours / theirs − 1, float noise below 1e-9 shown as 0."""
    g = ours / theirs - 1
    return 0.0 if abs(g) < 1e-9 else g


def mixed_baseline(costs: MixedCosts, best: Evaluation, engine: str, even: HeteroCut, kv_cap: int) -> Baseline:
    """An engine's even cut on the chosen placement: times, the memory check per stage, gains."""
    lay = best.layout
    detail = mixed_stages(costs, best, even)
    cycle = max(lay.micro_batches, lay.pp) * even.bottleneck
    thr = lay.sequences / cycle
    cap = min(s.kv_capacity_tokens for s in detail)
    reason = None
    if not even.fits:
        over = [k for k, ok in enumerate(even.stage_fits) if not ok]
        k = max(over, key=lambda i: even.stage_memory[i] - even.stage_limits[i])
        s = detail[k]
        reason = (
            f"stage {k} ({s.gpu}, node {s.node}) needs {s.memory.total_gib:.1f} GiB per GPU, "
            f"limit {s.memory.limit_gib:.1f} GiB"
        )
    return Baseline(
        engine=engine,  # type: ignore[arg-type]
        partition=list(even.sizes),
        feasible=even.fits,
        reason=reason,
        bottleneck_ms=even.bottleneck * 1e3,
        throughput_tokens_per_s=thr if even.fits else None,
        tpot_ms=cycle * 1e3 if even.fits else None,
        kv_capacity_tokens=cap,
        throughput_gain=_gain(lay.sequences / best.cycle, thr) if even.fits else None,
        kv_capacity_gain=_gain(kv_cap, cap) if even.fits and cap > 0 else None,
        stages=[
            BaselineStage(
                weights_gib=s.memory.weights_gib,
                kv_cache_gib=s.memory.kv_cache_gib,
                workspace_gib=s.memory.workspace_gib,
                reserve_gib=s.memory.reserve_gib,
                total_gib=s.memory.total_gib,
                limit_gib=s.memory.limit_gib,
                busy_ms=s.times.busy_ms,
            )
            for s in detail
        ],
    )


def mixed_units(costs: MixedCosts, best: Evaluation, stages: list[StagePlan]) -> list[UnitCost]:
    """Per planning unit, on its stage's kind."""
    lay = best.layout
    out = []
    for s in stages:
        kc = costs.kinds[s.gpu or costs.setup.gpu.name]
        dec, pre = kc.decode(lay.tp, lay.micro_batch_size), kc.prefill(lay.tp)
        w, kv = kc.weights(lay.tp, lay.pp), kc.kv_bytes(lay.tp, lay.sequences)
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

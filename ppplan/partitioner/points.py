"""The plan's points: degrees, scored candidates, the Pareto front with the plan on it, and the
per-unit costs of the chosen layout."""

from __future__ import annotations

import math

from ppplan.partitioner.costs import Costs, Evaluation
from ppplan.partitioner.plan import Candidate, Degrees, StagePlan, UnitCost
from ppplan.partitioner.space import GIB, Layout

__all__ = ["MAX_CANDIDATES", "candidate", "candidates", "degrees_of", "finite_ms", "pareto_points", "unit_costs"]

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
    return Candidate(
        degrees=degrees_of(e.layout),
        partition=list(e.sizes) if e.sizes else None,
        throughput_tokens_per_s=e.throughput,
        throughput_per_gpu=e.per_gpu,
        tpot_ms=e.tpot * 1e3,
        ttft_ms=e.ttft * 1e3,
        slo_met=e.slo_met,
        tokens_per_s_per_user=1.0 / e.tpot if e.tpot > 0 else None,
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


def unit_costs(costs: Costs, best: Evaluation, stages: list[StagePlan]) -> list[UnitCost]:
    lay = best.layout
    dec = costs.decode(lay.tp, lay.micro_batch_size)
    pre = costs.prefill(lay.tp)
    w = costs.weights(lay.tp, lay.pp)
    kv = costs.kv_bytes(lay.tp, lay.sequences)
    stage_of = [s.index for s in stages for _ in range(s.units[0], s.units[1] + 1)]
    out = []
    for u, unit in enumerate(costs.profile.units):
        name = "embedding" if unit.kind == "embed" else "lm_head" if unit.kind == "head" else f"layer {u - 1}"
        out.append(
            UnitCost(
                index=u,
                name=name,
                kind=unit.kind,
                stage=stage_of[u],
                decode_ms=float(dec[u]) * 1e3,
                prefill_ms=float(pre[u]) * 1e3,
                weights_gib=float(w[u]) / GIB,
                kv_cache_gib=float(kv[u]) / GIB,
            )
        )
    return out

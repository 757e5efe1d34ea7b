"""The stages of a mixed-cluster pipeline on their own GPU kinds, the engines' even cuts on the same
stages, and the per-unit costs (see :mod:`partitioner.mixed_plan`).

Global GPU ids and node indices follow the groups in cluster order (group 0's nodes first); within
a group, stage q runs on its node q // stages_per_node, GPUs slot·tp … of that node
(:class:`partitioner.hetero_problem.StagePlace`), which is what the exports read
(:mod:`partitioner.exports_layout`).
"""

from __future__ import annotations

from ppplan.partitioner.assembly import baseline
from ppplan.partitioner.costs import Costs, Evaluation
from ppplan.partitioner.hetero import HeteroCut, placement
from ppplan.partitioner.mixed_costs import MixedCosts
from ppplan.partitioner.plan import Baseline, StagePlan, UnitCost
from ppplan.partitioner.points import stage_plan, unit_costs
from ppplan.partitioner.problem import stage_bounds

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
    t = lay.tp
    first_gpu, first_node = _gpu_offsets(costs)
    decode_sends = placement(costs.hetero_problem(lay, tokens=float(lay.micro_batch_size)), cut.order, cut.counts)[1]
    stages = []
    for k, layers in enumerate(stage_bounds(cut.sizes)):
        place = cut.places[k]
        grp = costs.cluster.groups[place.group]
        dev0 = first_gpu[place.group] + place.node * grp.gpus_per_node + place.slot * t
        stages.append(
            stage_plan(
                costs.kinds[place.gpu],
                lay,
                k,
                layers,
                devices=list(range(dev0, dev0 + t)),
                node=first_node[place.group] + place.node,
                send=decode_sends[k],
                send_busy=cut.stage_sends[k],
                gpu=place.gpu,
            )
        )
    return stages


def mixed_baseline(costs: MixedCosts, best: Evaluation, engine: str, even: HeteroCut, kv_cap: int) -> Baseline:
    """An engine's even cut on the chosen placement: times, the memory check per stage, gains."""
    detail = mixed_stages(costs, best, even)
    reason = None
    if not even.fits:
        over = [k for k, ok in enumerate(even.stage_fits) if not ok]
        k = max(over, key=lambda i: even.stage_memory[i] - even.stage_limits[i])
        s = detail[k]
        reason = (
            f"stage {k} ({s.gpu}, node {s.node}) needs {s.memory.total_gib:.1f} GiB per GPU, "
            f"limit {s.memory.limit_gib:.1f} GiB"
        )
    return baseline(
        engine,
        best,
        list(even.sizes),
        detail,
        fits=even.fits,
        bottleneck=even.bottleneck,
        reason=reason,
        kv_cap=kv_cap,
    )


def mixed_units(costs: MixedCosts, best: Evaluation, stages: list[StagePlan]) -> list[UnitCost]:
    """Per planning unit, on its stage's kind."""

    def kind(s: StagePlan) -> Costs:
        return costs.kinds[s.gpu or costs.setup.gpu.name]

    return unit_costs(costs, best, stages, kind)

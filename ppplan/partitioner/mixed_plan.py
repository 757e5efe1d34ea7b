"""The Plan of one pipeline over a mixed cluster: stages on their own GPU kinds
(:mod:`partitioner.mixed_stages`), the engines' even cuts on the same placement, the groups of the
cluster in ``cluster.groups``, and the usual evidence (metrics, runner-ups, Pareto front,
candidates, exports, provenance, notes).
"""

from __future__ import annotations

from dataclasses import dataclass

from ppplan.core.model_source import ModelSource
from ppplan.partitioner.assembly import SolverReport, assemble_plan, metrics, provenance, schedule
from ppplan.partitioner.costs import Evaluation
from ppplan.partitioner.hetero import HeteroCut, HeteroProblem, HeteroSolution
from ppplan.partitioner.mixed_costs import MixedCosts
from ppplan.partitioner.mixed_stages import mixed_baseline, mixed_stages, mixed_units
from ppplan.partitioner.plan import (
    Baseline,
    ClusterInfo,
    Plan,
    Provenance,
    StagePlan,
)
from ppplan.partitioner.space import GIB

__all__ = ["MixedChoice", "build_mixed_plan"]


@dataclass(frozen=True, slots=True, kw_only=True)
class MixedChoice:
    """What the mixed search chose, with the evidence the Plan shows."""

    costs: MixedCosts
    best: Evaluation
    problem: HeteroProblem
    solution: HeteroSolution
    """the final solve (KV-headroom tie-break, the engines' even cuts on its placement)"""
    cut: HeteroCut
    """the adopted cut (the solution's, or CP-SAT's)"""
    runner_ups: list[Evaluation]
    front: list[Evaluation]
    evaluated: list[Evaluation]
    mode: str
    solver: SolverReport


def _cluster(costs: MixedCosts, cut: HeteroCut) -> ClusterInfo:
    """The first group's figures (catalog name, node size, HBM) and every group in ``groups``."""
    c, st = costs.cluster, costs.setup
    hosted = dict(zip(cut.order, cut.counts, strict=True))
    groups: list[dict[str, object]] = []
    for a, g in enumerate(c.groups):
        entry: dict[str, object] = dict(g.as_json())
        entry |= {"usable_gib": costs.kinds[g.gpu.name].setup.usable_bytes / GIB, "stages": hosted.get(a, 0)}
        if g.hosts:
            entry["hosts"] = list(g.hosts)
        groups.append(entry)
    return ClusterInfo(
        gpu=st.gpu.name,
        count=c.count,
        nodes=c.nodes,
        gpus_per_node=c.groups[0].gpus_per_node,
        hbm_gib=st.gpu.hbm_bytes / GIB,
        usable_gib=st.usable_bytes / GIB,
        nvlink_gbps=c.groups[0].link_bw / 1e9,
        network_gbps=c.inter_bw / 1e9,
        groups=groups,
    )


def _provenance(costs: MixedCosts, solver: SolverReport, solve_ms: float) -> Provenance:
    """The first group's cost model; every kind's time source and efficiency."""
    descs = {name: c.cm.describe() for name, c in costs.kinds.items()}
    eff: dict[str, object] = dict(descs[costs.setup.gpu.name]["efficiency"])  # type: ignore[call-overload]
    eff["by_gpu"] = {name: d["efficiency"] for name, d in descs.items()}
    time_source = "; ".join(f"{name}: {d['time_source']}" for name, d in descs.items())
    return provenance(costs, solver, solve_ms, time_source=time_source, efficiency=eff)


def _notes(choice: MixedChoice, stages: list[StagePlan], baselines: list[Baseline]) -> list[str]:
    costs, best = choice.costs, choice.best
    lay, c = best.layout, costs.cluster
    used = lay.tp * lay.pp
    by_node: dict[tuple[int, str], list[int]] = {}
    for s in stages:
        by_node.setdefault((s.node, s.gpu or ""), []).append(s.index)
    where = "; ".join(
        f"node {n} ({gpu}): stages {ks[0]}–{ks[-1]}, {sum(stages[k].num_decoder_layers for k in ks)} layers"
        for (n, gpu), ks in by_node.items()
    )
    notes = [
        f"mixed cluster {c.text}: one pipeline of TP {lay.tp} × PP {lay.pp} ({where}); "
        f"{c.count - used} of {c.count} GPUs idle (replicas across mixed groups are not planned)",
        "cluster.gpu, gpus_per_node and hbm_gib describe the first group; cluster.groups lists every group "
        "and each stage names its GPU kind, node and memory limit",
    ]
    if costs.req.objective == "throughput":
        notes.append("throughput objective: output tokens/s over all GPUs of the cluster (idle ones count)")
    vllm = next((b for b in baselines if b.engine == "vllm"), None)
    if vllm is not None:
        if not vllm.feasible:
            verdict = f"does not fit: {vllm.reason}"
        elif vllm.throughput_gain:
            thr, gain = vllm.throughput_tokens_per_s or 0.0, vllm.throughput_gain
            verdict = f"fits at {thr:,.0f} tokens/s; the plan's cut gives {gain:+.1%}"
        else:
            verdict = "is as fast as the plan's cut"
        notes.append(f"the engines' even cut {vllm.partition} (vLLM's default) on the same stages {verdict}")
    if not best.slo_met:
        notes.append("the pinned concurrency misses the SLOs; the closest configuration by the objective")
    for kc in costs.kinds.values():
        note = kc.cm.profile_note()
        if note:
            notes.append(note)
    if costs.profile.quantization:
        notes.append(f"weights: {costs.profile.quantization}")
    load = (
        "the request rate" if costs.req.rate is not None else "the rate a closed loop of the planned sequences runs at"
    )
    notes.append(
        f"ttft_ms is one request on an idle pipeline; ttft_p50/p90 are under Poisson arrivals at {load} "
        "(queueing approximation, with the step costs of the bottleneck stage's GPU kind); TPOT and throughput "
        "are the steady state"
    )
    return notes


def build_mixed_plan(choice: MixedChoice, source: ModelSource, solve_ms: float) -> Plan:
    """The Plan of ``choice`` with its evidence and the engines' exports."""
    costs, best, cut = choice.costs, choice.best, choice.cut
    stages = mixed_stages(costs, best, cut)
    kv_cap = min(s.kv_capacity_tokens for s in stages)
    baselines = [mixed_baseline(costs, best, e, even, kv_cap) for e, even in choice.solution.baselines.items()]
    parts = {
        "cluster": _cluster(costs, cut),
        "schedule": schedule(best, stages, kinds=" of mixed GPUs"),
        "metrics": metrics(costs, best, stages, " + ".join(dict.fromkeys(s.gpu or "" for s in stages))),
        "baselines": baselines,
        "units": mixed_units(costs, best, stages),
        "provenance": _provenance(costs, choice.solver, solve_ms),
        "notes": _notes(choice, stages, baselines),
    }
    points = (choice.runner_ups, choice.front, choice.evaluated)
    return assemble_plan(costs, source, best, stages, choice.mode, points, parts)

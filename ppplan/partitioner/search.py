"""The outer search: TP × PP × replicas × batch, each scored with its exact stage cut.

For every layout (:mod:`partitioner.space`) the inner problem (contiguous decoder layers into PP
stages, embedding on the first, norm + LM head on the last) is solved exactly by
:func:`partitioner.dp.solve_partition`, in branch-and-bound order (:mod:`partitioner.bounds`);
the schedule model is in :mod:`partitioner.costs`, the Plan is assembled in
:mod:`partitioner.assembly`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ppplan.core.model_source import ModelSource
from ppplan.core.profile import Profile
from ppplan.partitioner.assembly import SolverReport, build_plan, explain_infeasible, explain_slo_miss
from ppplan.partitioner.batch import BatchSearch, Degrees3
from ppplan.partitioner.bounds import (
    RUNNER_UPS,
    RankKey,
    Search,
    branch_and_bound,
    merge_fronts,
    optimistic,
    pareto_families,
    rank_key,
)
from ppplan.partitioner.costs import Costs, Evaluation
from ppplan.partitioner.expert_costs import expert_families
from ppplan.partitioner.plan import Plan
from ppplan.partitioner.points import kv_capacity_tokens
from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.space import InfeasibleError, PlanningError, Setup, check_request, degrees, valid_tp_degrees

__all__ = ["SOLVER", "InfeasibleError", "PlanningError", "plan_model", "valid_tp_degrees"]

SOLVER = "dp-exact-v1 (two-pass bottleneck DP, KV-headroom tie-break)"


def plan_model(req: PlanRequest, profile: Profile, source: ModelSource) -> Plan:
    """Search degrees and cuts for ``req`` and return the best plan with its evidence.

    Args:
        req: the request (validated).
        profile: the measured or analytic profile to plan with, already checked against the
            request's model and dtypes (:func:`ppplan.profiler.resolve.resolve_inputs`).
        source: where the model came from (for engine commands and hints).

    Raises:
        PlanningError: a pinned degree the model does not allow, a profile that does not match; no
            configuration meets the SLOs (field ``slo``: the SLO, the best value reached, what to
            change), unless the concurrency is pinned (then the plan says it misses them).
        InfeasibleError: no configuration fits in memory (the message says how much is needed).
    """
    t0 = time.perf_counter()
    if req.is_mixed:
        from ppplan.partitioner.mixed import plan_mixed  # lazy: only mixed clusters take this path

        return plan_mixed(req, profile, source)
    setup = Setup.of(req, profile)
    tps = check_request(req, profile, setup)
    experts = expert_families(req, profile, setup)
    # a pinned EP degree above 1 leaves only the expert-parallel families
    dense = [] if req.ep is not None and req.ep > 1 else [(Costs(req, profile, setup), tps)]
    families: list[_Family] = []
    for c, t in [*dense, *experts]:
        families.append(_Family.search(c, list(degrees(req, setup, t)), _floor(req, families)))
    ranked = sorted(
        ((e, f) for f in families for e in f.found.evaluations), key=lambda x: rank_key(req, x[0]), reverse=True
    )
    if not ranked:
        raise explain_infeasible(families[0].costs, source, [e for f in families for e in f.found.infeasible])
    first, fam = ranked[0]
    if not first.slo_met and req.concurrency is None:
        raise explain_slo_miss(fam.costs, first)
    best = fam.costs.evaluate(first.layout, final=True)
    solver = SolverReport(name=SOLVER, optimal=True, gap=0.0)
    if req.solver == "cpsat":
        best, solver = _resolve_with_cpsat(fam.costs, best)
    evals = [best, *(e for e, _ in ranked[1:])]
    fronts = pareto_families([(f.costs, f.degrees, f.batches, [best] if f is fam else []) for f in families])
    # latencies under load for the points the plan shows, each with its own family's costs
    owner = {id(e): f.costs for f, pts in zip(families, fronts, strict=True) for e in pts}
    owner.update({id(e): f.costs for f in families for e in f.found.evaluations})
    front = [owner[id(e)].with_load(e) if e is not best else e for e in merge_fronts(fronts)]
    runner_ups = [owner[id(e)].with_load(e) for e in _runner_ups(evals)]
    evaluated = [e for f in families for e in f.batches.exact_evaluations]
    solve_ms = (time.perf_counter() - t0) * 1e3
    plan = build_plan(fam.costs, source, best, solver, runner_ups, front, evaluated, fam.batches.mode, solve_ms)
    if len(families) > 1:
        notes = [*plan.notes, _family_note(families, fam)]
        solved = sum(f.costs.evaluated for f in families)
        prov = plan.provenance.model_copy(update={"configs_evaluated": solved})
        plan = plan.model_copy(update={"notes": notes, "provenance": prov})
    return plan


@dataclass(frozen=True, slots=True, kw_only=True)
class _Family:
    """One family of layouts searched with its own costs: the dense layouts, or one expert-parallel
    layout of the MoE layers (:mod:`partitioner.expert_costs`)."""

    costs: Costs
    degrees: list[Degrees3]
    batches: BatchSearch
    found: Search

    @classmethod
    def search(cls, costs: Costs, degs: list[Degrees3], floor: RankKey | None = None) -> _Family:
        batches = BatchSearch(costs, optimistic)
        return cls(costs=costs, degrees=degs, batches=batches, found=branch_and_bound(costs, degs, batches, floor))


def _floor(req: PlanRequest, families: list[_Family]) -> RankKey | None:
    """The rank key a later family's configuration must reach to enter the runner-ups of the families
    searched so far (None while they have fewer than RUNNER_UPS + 1 configurations)."""
    keys = sorted((rank_key(req, e) for f in families for e in f.found.evaluations), reverse=True)
    return keys[RUNNER_UPS] if len(keys) > RUNNER_UPS else None


def _family_note(families: list[_Family], chosen: _Family) -> str:
    """What each family's best configuration reaches, with its KV capacity (the comparison the
    choice rests on)."""
    parts = []
    for f in families:
        if not f.found.evaluations:
            continue
        e = f.found.evaluations[0]
        lay = e.layout
        kind = f"DP-attention {lay.attention_dp} + EP {lay.ep}" if lay.ep > 1 else "TP"
        cap = kv_capacity_tokens(f.costs, e)
        parts.append(
            f"{kind}: TP{lay.tp // lay.attention_dp}×PP{lay.pp}×{lay.replicas} {e.per_gpu:,.0f} tok/s/GPU, "
            f"TPOT {e.tpot * 1e3:.1f} ms, KV {cap:,} tokens per replica" + (" (chosen)" if f is chosen else "")
        )
    return "layouts compared: " + "; ".join(parts)


def _runner_ups(evals: list[Evaluation]) -> list[Evaluation]:
    """The best evaluation of each next-best TP × PP (with its EP layout), up to ``RUNNER_UPS`` (replicas
    of one TP × PP have the same per-GPU figures: one of them is a runner-up)."""
    key = lambda e: (*e.layout.degrees[:2], e.layout.ep, e.layout.attention_dp)  # noqa: E731
    seen = {key(evals[0])}
    out: list[Evaluation] = []
    for e in evals[1:]:
        if key(e) in seen:
            continue
        seen.add(key(e))
        out.append(e)
        if len(out) == RUNNER_UPS:
            break
    return out


def _resolve_with_cpsat(costs: Costs, best: Evaluation) -> tuple[Evaluation, SolverReport]:
    """Re-solve the chosen configuration's cut with CP-SAT (hinted with the DP cut) and adopt it."""
    from ppplan.partitioner.cpsat import solve_partition_cpsat  # lazy: ortools is heavy, the default solver is the DP

    res = solve_partition_cpsat(costs.problem(best.layout), time_limit_s=10.0)
    if not res.has_cut:  # the hint alone is feasible: only a time-out lands here
        return best, SolverReport(
            name=f"cp-sat {res.status} ({res.reason}); dp-exact-v1 cut kept", optimal=True, gap=0.0
        )
    adopted = costs.scored(best.layout, res.bottleneck, res.sizes, exact=True)
    report = SolverReport(
        name=f"cp-sat ({res.status}, hinted with the DP cut, {res.wall_s * 1e3:.0f} ms)",
        optimal=res.status == "optimal",
        gap=res.gap,
    )
    return adopted, report

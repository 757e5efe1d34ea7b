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
from ppplan.partitioner.bounds import RUNNER_UPS, Search, branch_and_bound, merge_fronts, optimistic, pareto, rank_key
from ppplan.partitioner.costs import Costs, Evaluation
from ppplan.partitioner.expert_costs import expert_families
from ppplan.partitioner.plan import Plan
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
    families = [_Family.search(Costs(req, profile, setup), list(degrees(req, setup, tps)))]
    families += [_Family.search(c, list(degrees(req, setup, t))) for c, t in expert_families(req, profile, setup)]
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
    front = merge_fronts([pareto(f.costs, f.degrees, f.batches, [best] if f is fam else []) for f in families])
    evaluated = [e for f in families for e in f.batches.exact_evaluations]
    solve_ms = (time.perf_counter() - t0) * 1e3
    plan = build_plan(fam.costs, source, best, solver, _runner_ups(evals), front, evaluated, fam.batches.mode, solve_ms)
    if len(families) > 1:
        notes = [*plan.notes, _family_note(families, fam)]
        plan = plan.model_copy(update={"notes": notes})
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
    def search(cls, costs: Costs, degs: list[Degrees3]) -> _Family:
        batches = BatchSearch(costs, optimistic)
        return cls(costs=costs, degrees=degs, batches=batches, found=branch_and_bound(costs, degs, batches))


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
        cap = f.costs.kv_capacity_tokens(e)
        parts.append(
            f"{kind}: TP{lay.tp // lay.attention_dp}×PP{lay.pp}×{lay.replicas} {e.per_gpu:,.0f} tok/s/GPU, "
            f"TPOT {e.tpot * 1e3:.1f} ms, KV {cap:,} tokens per replica" + (" (chosen)" if f is chosen else "")
        )
    return "layouts compared: " + "; ".join(parts)


def _runner_ups(evals: list[Evaluation]) -> list[Evaluation]:
    """The best evaluation of each next-best TP × PP, up to ``RUNNER_UPS`` (replicas of one TP × PP
    have the same per-GPU figures: one of them is a runner-up)."""
    seen = {evals[0].layout.degrees[:2]}
    out: list[Evaluation] = []
    for e in evals[1:]:
        if e.layout.degrees[:2] in seen:
            continue
        seen.add(e.layout.degrees[:2])
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

"""The outer search: TP × PP × replicas × batch, each scored with its exact stage cut.

For every layout (:mod:`partitioner.space`) the inner problem (contiguous decoder layers into PP
stages, embedding on the first, norm + LM head on the last) is solved exactly by
:func:`partitioner.dp.solve_partition`, in branch-and-bound order (:mod:`partitioner.bounds`);
the schedule model is in :mod:`partitioner.costs`, the Plan is assembled in
:mod:`partitioner.assembly`.
"""

from __future__ import annotations

import time

from ppplan.core.model_source import ModelSource
from ppplan.core.profile import Profile
from ppplan.partitioner.assembly import SolverReport, build_plan, explain_infeasible, explain_slo_miss
from ppplan.partitioner.batch import BatchSearch
from ppplan.partitioner.bounds import RUNNER_UPS, branch_and_bound, optimistic, pareto
from ppplan.partitioner.costs import Costs, Evaluation
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
    setup = Setup.of(req, profile)
    tps = check_request(req, profile, setup)
    costs = Costs(req, profile, setup)
    degs = list(degrees(req, setup, tps))
    batches = BatchSearch(costs, optimistic)
    found = branch_and_bound(costs, degs, batches)
    evals = found.evaluations
    if not evals:
        raise explain_infeasible(costs, source, found.infeasible)
    if not evals[0].slo_met and req.concurrency is None:
        raise explain_slo_miss(costs, evals[0])
    best = costs.evaluate(evals[0].layout, final=True)
    solver = SolverReport(name=SOLVER, optimal=True, gap=0.0)
    if req.solver == "cpsat":
        best, solver = _resolve_with_cpsat(costs, best)
    evals = [best, *evals[1:]]
    front = pareto(costs, degs, batches, [best])
    solve_ms = (time.perf_counter() - t0) * 1e3
    return build_plan(
        costs, source, best, solver, _runner_ups(evals), front, batches.exact_evaluations, batches.mode, solve_ms
    )


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

"""The stage partition as an OR-Tools CP-SAT model: the second, independent solver.

Solves the same :class:`~partitioner.problem.PartitionProblem` as the DP (heterogeneous stages
included: per-stage speed and memory limit), warm-started with the DP's cut as a hint, with a time
limit, reporting status, objective bound and optimality gap. It exists to cross-check the DP and as
the base for constraints a DP cannot express (placement across nodes); the planner's default
solver remains the DP, which is exact and orders of magnitude faster.

Times are scaled to integers (``TIME_RESOLUTION`` steps over the largest possible stage time), so
the CP-SAT optimum is exact up to that resolution; the reported numbers are the returned cut's
:func:`~partitioner.problem.evaluate_cut`. Memory is kept in whole bytes (usage rounded up, limits down).
"""

from __future__ import annotations

import math
import time
from typing import Any

from ortools.sat.python import cp_model

from ppplan.partitioner.dp import solve_partition
from ppplan.partitioner.problem import PartitionProblem, PartitionSolution, SolveStatus, evaluate_cut, stage_bounds

__all__ = ["TIME_RESOLUTION", "solve_partition_cpsat"]

#: integer steps the largest stage time is divided into
TIME_RESOLUTION = 10_000_000

_WITH_CUT: dict[Any, SolveStatus] = {cp_model.OPTIMAL: "optimal", cp_model.FEASIBLE: "feasible"}


def solve_partition_cpsat(
    pr: PartitionProblem, *, time_limit_s: float = 10.0, workers: int = 1, hint: bool = True
) -> PartitionSolution:
    """Solve ``pr`` with CP-SAT.

    Args:
        pr: the instance (the same type the DP takes).
        time_limit_s: wall-clock limit of the search, seconds.
        workers: CP-SAT search workers.
        hint: warm-start with the DP's cut (when the DP finds one).

    Returns:
        Status 'optimal' or 'feasible' with the cut, its bound (seconds) and gap; 'infeasible' when
        no cut fits; 'timeout' when the limit passed before any cut was found.

    Raises:
        RuntimeError: CP-SAT rejected the model as invalid (a bug in this module, not in the input).
    """
    t0 = time.perf_counter()
    m, y, q = _build_model(pr)
    if hint:
        _add_dp_hint(m, y, pr)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = workers
    code = solver.solve(m)
    wall = time.perf_counter() - t0
    if code == cp_model.MODEL_INVALID:
        raise RuntimeError(f"CP-SAT rejected the partition model as invalid: {m.validate()}")
    if code == cp_model.INFEASIBLE:
        return PartitionSolution(
            status="infeasible", solver="cpsat", wall_s=wall, reason="no cut satisfies the memory limits"
        )
    if code == cp_model.UNKNOWN:
        return PartitionSolution(
            status="timeout", solver="cpsat", wall_s=wall, reason=f"no solution within {time_limit_s:g} s"
        )
    if code not in _WITH_CUT:
        raise RuntimeError(f"CP-SAT returned an unexpected status {solver.status_name(code)}")
    stages = [solver.value(v) for v in y]
    ev = evaluate_cut(pr, [stages.count(k) for k in range(pr.stages)])
    bound = solver.best_objective_bound / q
    gap = max(0.0, (ev.bottleneck - bound) / ev.bottleneck) if ev.bottleneck > 0 else 0.0
    return PartitionSolution(
        status=_WITH_CUT[code],
        solver="cpsat",
        sizes=ev.sizes,
        bottleneck=ev.bottleneck,
        stage_times=ev.stage_times,
        stage_memory=ev.stage_memory,
        bound=bound,
        gap=gap,
        wall_s=wall,
    )


def _build_model(pr: PartitionProblem) -> tuple[cp_model.CpModel, list[Any], float]:
    """The CP-SAT model of ``pr``: (model, stage index variable of each unit, integer steps per second)."""
    n, p = len(pr.time), pr.stages
    speed, adds = pr.speeds(), pr.stage_adds()
    worst = max((sum(pr.time) * speed[k] + adds[k]) for k in range(p)) or 1.0
    q = TIME_RESOLUTION / worst  # integer steps per second
    m = cp_model.CpModel()
    # stage index of each unit: starts at 0, ends at p-1, steps of 0 or 1 (contiguous, non-empty)
    y = [m.new_int_var(0, p - 1, f"stage_of_unit_{i}") for i in range(n)]
    m.add(y[0] == 0)
    m.add(y[n - 1] == p - 1)
    for i in range(n - 1):
        m.add(y[i + 1] - y[i] >= 0)
        m.add(y[i + 1] - y[i] <= 1)
    x = _stage_indicators(m, y, n, p)
    # the slowest stage: every stage's scaled time plus its send is at most B
    bott = m.new_int_var(0, math.ceil(TIME_RESOLUTION * 1.01) + 1, "bottleneck")
    for k in range(p):
        terms = [round(pr.time[i] * speed[k] * q) * x[i][k] for i in range(n) if k in x[i]]
        m.add(sum(terms) + round(adds[k] * q) <= bott)
    _add_memory_limits(m, x, pr)
    m.minimize(bott)
    return m, y, q


def _stage_indicators(m: cp_model.CpModel, y: list[Any], n: int, p: int) -> list[dict[int, Any]]:
    """x[i][k] <=> unit i is on stage k; unit i can only be on stages max(0, i-(n-p))..min(i, p-1)."""
    x: list[dict[int, Any]] = []
    for i in range(n):
        row = {}
        for k in range(max(0, i - (n - p)), min(i, p - 1) + 1):
            b = m.new_bool_var(f"unit_{i}_on_stage_{k}")
            m.add(y[i] == k).only_enforce_if(b)
            m.add(y[i] != k).only_enforce_if(~b)
            row[k] = b
        m.add_exactly_one(row.values())
        x.append(row)
    return x


def _add_memory_limits(m: cp_model.CpModel, x: list[dict[int, Any]], pr: PartitionProblem) -> None:
    """Additive units plus the largest transient peak on each stage, within its limit (whole bytes)."""
    n = len(pr.time)
    mem = pr.memory or (0.0,) * n
    peak = pr.peak or (0.0,) * n
    for k, limit in enumerate(pr.stage_limits()):
        if limit == math.inf:
            continue
        units = [i for i in range(n) if k in x[i]]
        top = max((math.ceil(peak[i]) for i in units), default=0)
        pk = m.new_int_var(0, top, f"peak_of_stage_{k}")
        for i in units:
            if peak[i] > 0:
                m.add(pk >= math.ceil(peak[i])).only_enforce_if(x[i][k])
        m.add(sum(math.ceil(mem[i]) * x[i][k] for i in units) + pk <= math.floor(limit))


def _add_dp_hint(m: cp_model.CpModel, y: list[Any], pr: PartitionProblem) -> None:
    """Warm-start with the DP's cut (nothing when the DP finds none)."""
    dp = solve_partition(pr, tie_break=False, explain=False)
    if dp.optimal:
        for k, (first, last) in enumerate(stage_bounds(dp.sizes)):
            for i in range(first, last + 1):
                m.add_hint(y[i], k)

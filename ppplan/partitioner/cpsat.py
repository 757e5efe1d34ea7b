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

__all__ = [
    "TIME_RESOLUTION",
    "WITH_CUT",
    "add_stage_memory",
    "bound_and_gap",
    "hint_cut",
    "run_model",
    "solve_partition_cpsat",
    "stage_chain",
]

#: integer steps the largest stage time is divided into
TIME_RESOLUTION = 10_000_000

WITH_CUT: dict[Any, SolveStatus] = {cp_model.OPTIMAL: "optimal", cp_model.FEASIBLE: "feasible"}


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
    solver, code = run_model(m, time_limit_s, workers)
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
    if code not in WITH_CUT:
        raise RuntimeError(f"CP-SAT returned an unexpected status {solver.status_name(code)}")
    stages = [solver.value(v) for v in y]
    ev = evaluate_cut(pr, [stages.count(k) for k in range(pr.stages)])
    bound, gap = bound_and_gap(solver, q, ev.bottleneck)
    return PartitionSolution(
        status=WITH_CUT[code],
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
    y, x = stage_chain(m, n, p, "unit")
    # the slowest stage: every stage's scaled time plus its send is at most B
    bott = m.new_int_var(0, math.ceil(TIME_RESOLUTION * 1.01) + 1, "bottleneck")
    for k in range(p):
        terms = [round(pr.time[i] * speed[k] * q) * x[i][k] for i in range(n) if k in x[i]]
        m.add(sum(terms) + round(adds[k] * q) <= bott)
    _add_memory_limits(m, x, pr)
    m.minimize(bott)
    return m, y, q


def run_model(m: cp_model.CpModel, time_limit_s: float, workers: int) -> tuple[cp_model.CpSolver, Any]:
    """Solve ``m`` within ``time_limit_s`` seconds on ``workers`` workers: (the solver, its status)."""
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = workers
    return solver, solver.solve(m)


def bound_and_gap(solver: cp_model.CpSolver, q: float, bottleneck: float) -> tuple[float, float]:
    """(proven lower bound on the bottleneck in seconds, relative gap of ``bottleneck`` seconds to
    it) of a model solved at ``q`` integer steps per second."""
    bound = solver.best_objective_bound / q
    return bound, max(0.0, (bottleneck - bound) / bottleneck) if bottleneck > 0 else 0.0


def stage_chain(m: cp_model.CpModel, n: int, p: int, item: str) -> tuple[list[Any], list[dict[int, Any]]]:
    """The assignment of ``n`` items (``item`` names them: unit, layer) to ``p`` contiguous, non-empty
    stages: (y, x) with y[i] the stage index of item i (0 first, p-1 last, steps of 0 or 1) and
    x[i][k] <=> item i is on stage k, for the stages it can be on: max(0, i-(n-p))..min(i, p-1)."""
    y = [m.new_int_var(0, p - 1, f"stage_of_{item}_{i}") for i in range(n)]
    m.add(y[0] == 0)
    m.add(y[n - 1] == p - 1)
    for i in range(n - 1):
        m.add(y[i + 1] - y[i] >= 0)
        m.add(y[i + 1] - y[i] <= 1)
    x: list[dict[int, Any]] = []
    for i in range(n):
        row = {}
        for k in range(max(0, i - (n - p)), min(i, p - 1) + 1):
            b = m.new_bool_var(f"{item}_{i}_on_stage_{k}")
            m.add(y[i] == k).only_enforce_if(b)
            m.add(y[i] != k).only_enforce_if(~b)
            row[k] = b
        m.add_exactly_one(row.values())
        x.append(row)
    return y, x


def add_stage_memory(
    m: cp_model.CpModel,
    x: list[dict[int, Any]],
    k: int,
    items: list[int],
    memory: tuple[float, ...] | list[float],
    peak: tuple[float, ...] | list[float],
    limit: float,
) -> None:
    """Stage ``k`` (which may hold ``items``) within ``limit`` bytes: its items' additive ``memory``
    plus the largest transient ``peak`` among them, in whole bytes (usage rounded up, the limit down)."""
    top = max((math.ceil(peak[i]) for i in items), default=0)
    pk = m.new_int_var(0, top, f"peak_of_stage_{k}")
    for i in items:
        if peak[i] > 0:
            m.add(pk >= math.ceil(peak[i])).only_enforce_if(x[i][k])
    m.add(sum(math.ceil(memory[i]) * x[i][k] for i in items) + pk <= math.floor(limit))


def hint_cut(m: cp_model.CpModel, y: list[Any], sizes: tuple[int, ...] | list[int]) -> None:
    """Warm-start ``m`` (stage index ``y`` of each item) with the cut ``sizes``."""
    for k, (first, last) in enumerate(stage_bounds(sizes)):
        for i in range(first, last + 1):
            m.add_hint(y[i], k)


def _add_memory_limits(m: cp_model.CpModel, x: list[dict[int, Any]], pr: PartitionProblem) -> None:
    """Additive units plus the largest transient peak on each stage, within its limit (whole bytes)."""
    n = len(pr.time)
    mem = pr.memory or (0.0,) * n
    peak = pr.peak or (0.0,) * n
    for k, limit in enumerate(pr.stage_limits()):
        if limit == math.inf:
            continue
        add_stage_memory(m, x, k, [i for i in range(n) if k in x[i]], mem, peak, limit)


def _add_dp_hint(m: cp_model.CpModel, y: list[Any], pr: PartitionProblem) -> None:
    """Warm-start with the DP's cut (nothing when the DP finds none)."""
    dp = solve_partition(pr, tie_break=False, explain=False)
    if dp.optimal:
        hint_cut(m, y, dp.sizes)

"""The stage partition as an OR-Tools CP-SAT model: the second, independent solver.

Solves the same :class:`~partitioner.dp.PartitionProblem` as the DP (heterogeneous stages
included: per-stage speed and memory limit), warm-started with the DP's cut as a hint, with a time
limit, reporting status, objective bound and optimality gap. It exists to cross-check the DP and as
the base for constraints a DP cannot express (placement across nodes); the planner's default
solver remains the DP, which is exact and orders of magnitude faster.

Times are scaled to integers (``TIME_RESOLUTION`` steps over the largest possible stage time), so
the CP-SAT optimum is exact up to that resolution; the reported bottleneck is recomputed in floats
from the returned cut. Memory is kept in whole bytes (usage rounded up, limits down).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

from ppplan.partitioner.dp import PartitionProblem, solve_partition, stage_bounds

__all__ = ["TIME_RESOLUTION", "CpsatResult", "solve_partition_cpsat"]

#: integer steps the largest stage time is divided into
TIME_RESOLUTION = 10_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class CpsatResult:
    """CP-SAT's answer: status, cut, bottleneck (seconds), lower bound and gap."""

    status: Literal["optimal", "feasible", "infeasible", "unknown"]
    sizes: tuple[int, ...] = ()
    bottleneck: float = math.inf
    bound: float = 0.0
    """proven lower bound on the bottleneck, seconds"""
    gap: float = math.inf
    """(bottleneck - bound) / bottleneck"""
    wall_s: float = 0.0
    reason: str | None = None


def solve_partition_cpsat(
    pr: PartitionProblem, *, time_limit_s: float = 10.0, workers: int = 1, hint: bool = True
) -> CpsatResult:
    """Solve ``pr`` with CP-SAT.

    Args:
        pr: the instance (the same type the DP takes).
        time_limit_s: wall-clock limit of the search, seconds.
        workers: CP-SAT search workers.
        hint: warm-start with the DP's cut (when the DP finds one).
    """
    from ortools.sat.python import cp_model

    t0 = time.perf_counter()
    n, p = len(pr.time), pr.stages
    speed = pr.stage_speed or (1.0,) * p
    sends = pr.send_time or (0.0,) * (p - 1)
    adds = [*sends, 0.0]
    if pr.stage_memory_limit is not None:
        limits = list(pr.stage_memory_limit)
    else:
        limits = [pr.memory_limit if pr.memory_limit is not None else math.inf] * p
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
    # x[i][k] <=> unit i is on stage k; unit i can only be on stages max(0, i-(n-p))..min(i, p-1)
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
    # the slowest stage: every stage's scaled time plus its send is at most B
    bott = m.new_int_var(0, math.ceil(TIME_RESOLUTION * 1.01) + 1, "bottleneck")
    for k in range(p):
        terms = [round(pr.time[i] * speed[k] * q) * x[i][k] for i in range(n) if k in x[i]]
        m.add(sum(terms) + round(adds[k] * q) <= bott)
    # memory: additive units plus the largest transient peak on the stage, within its limit
    mem = pr.memory or (0.0,) * n
    peak = pr.peak or (0.0,) * n
    for k in range(p):
        if limits[k] == math.inf:
            continue
        units = [i for i in range(n) if k in x[i]]
        top = max((math.ceil(peak[i]) for i in units), default=0)
        pk = m.new_int_var(0, top, f"peak_of_stage_{k}")
        for i in units:
            if peak[i] > 0:
                m.add(pk >= math.ceil(peak[i])).only_enforce_if(x[i][k])
        m.add(sum(math.ceil(mem[i]) * x[i][k] for i in units) + pk <= math.floor(limits[k]))
    m.minimize(bott)
    if hint:
        dp = solve_partition(pr, tie_break=False, explain=False)
        if dp.optimal:
            for k, (first, last) in enumerate(stage_bounds(dp.sizes)):
                for i in range(first, last + 1):
                    m.add_hint(y[i], k)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = workers
    code = solver.solve(m)
    wall = time.perf_counter() - t0
    if code == cp_model.INFEASIBLE:
        return CpsatResult(status="infeasible", wall_s=wall, reason="no cut satisfies the memory limits")
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return CpsatResult(status="unknown", wall_s=wall, reason=f"no solution within {time_limit_s:g} s")
    stages = [solver.value(v) for v in y]
    sizes = tuple(stages.count(k) for k in range(p))
    times = [sum(pr.time[a : b + 1]) * speed[k] + adds[k] for k, (a, b) in enumerate(stage_bounds(sizes))]
    bottleneck = max(times)
    bound = solver.best_objective_bound / q
    status: Literal["optimal", "feasible"] = "optimal" if code == cp_model.OPTIMAL else "feasible"
    gap = max(0.0, (bottleneck - bound) / bottleneck) if bottleneck > 0 else 0.0
    return CpsatResult(status=status, sizes=sizes, bottleneck=bottleneck, bound=bound, gap=gap, wall_s=wall)

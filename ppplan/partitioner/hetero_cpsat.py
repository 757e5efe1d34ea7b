"""The cut of one mixed-cluster placement as an OR-Tools CP-SAT model: the independent cross-check.

For a placement (group order and stage counts, as :func:`partitioner.hetero.solve_hetero` chose
it) the model assigns every layer a stage (contiguous, non-empty stages), costs stage ``k`` with its
own group's per-layer times plus its send, keeps every stage within its group's memory limit and
minimises the slowest stage. It is warm-started with the exact DP's cut, time-limited, and reports
its bound and gap; the numbers it returns are :func:`~partitioner.hetero_problem.evaluate_hetero_cut`'s
for the cut it found. Times are integers (``TIME_RESOLUTION`` steps over the largest possible
stage time), memory whole bytes (usage rounded up, limits down), as in :mod:`partitioner.cpsat`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ortools.sat.python import cp_model

from ppplan.partitioner.cpsat import (
    TIME_RESOLUTION,
    WITH_CUT,
    add_stage_memory,
    bound_and_gap,
    hint_cut,
    run_model,
    stage_chain,
)
from ppplan.partitioner.hetero import solve_hetero, solve_placement
from ppplan.partitioner.hetero_problem import HeteroCut, HeteroProblem, evaluate_hetero_cut, placement
from ppplan.partitioner.problem import SolveStatus

__all__ = ["TIME_RESOLUTION", "HeteroCpsatResult", "solve_hetero_cpsat"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HeteroCpsatResult:
    """CP-SAT's answer for one placement."""

    status: SolveStatus
    cut: HeteroCut | None
    bound: float
    """proven lower bound on the bottleneck, seconds"""
    gap: float
    """(bottleneck − bound) / bottleneck; inf without a cut"""
    wall_s: float


def solve_hetero_cpsat(
    pr: HeteroProblem,
    order: Sequence[int] | None = None,
    counts: Sequence[int] | None = None,
    *,
    time_limit_s: float = 10.0,
    workers: int = 1,
    hint: bool = True,
) -> HeteroCpsatResult:
    """Solve the cut of placement (``order``, ``counts``) with CP-SAT; without a placement, the one
    the exact search chooses. ``hint``: warm-start with the exact DP's cut of the placement.

    Raises:
        PpplanError: an invalid placement.
        RuntimeError: CP-SAT rejected the model as invalid (a bug here, not in the input).
    """
    t0 = time.perf_counter()
    if order is None or counts is None:
        best = solve_hetero(pr, final=False).cut
        if best is None:
            return HeteroCpsatResult(status="infeasible", cut=None, bound=math.inf, gap=math.inf, wall_s=0.0)
        order, counts = best.order, best.counts
    order, counts = tuple(order), tuple(counts)
    groups, sends = placement(pr, order, counts)
    m, y, q = _model(pr, groups, sends)
    dp = solve_placement(pr, order, counts, final=False) if hint else None
    if dp is not None:
        hint_cut(m, y, dp.sizes)
    solver, code = run_model(m, time_limit_s, workers)
    wall = time.perf_counter() - t0
    if code == cp_model.MODEL_INVALID:
        raise RuntimeError(f"CP-SAT rejected the placement model as invalid: {m.validate()}")
    if code not in WITH_CUT:
        status: SolveStatus = "infeasible" if code == cp_model.INFEASIBLE else "timeout"
        return HeteroCpsatResult(status=status, cut=None, bound=math.inf, gap=math.inf, wall_s=wall)
    stage_of = [solver.value(v) for v in y]
    cut = evaluate_hetero_cut(pr, order, counts, [stage_of.count(k) for k in range(len(groups))])
    bound, gap = bound_and_gap(solver, q, cut.bottleneck)
    return HeteroCpsatResult(status=WITH_CUT[code], cut=cut, bound=bound, gap=gap, wall_s=wall)


def _model(pr: HeteroProblem, groups: list[int], sends: list[float]) -> tuple[cp_model.CpModel, list[Any], float]:
    """(model, stage variable of each layer, integer steps per second) of one placement."""
    n, p = pr.layers, len(groups)
    worst = max(sum(pr.groups[g].time) + x for g, x in zip(groups, sends, strict=True)) or 1.0
    q = TIME_RESOLUTION / worst
    m = cp_model.CpModel()
    y, x = stage_chain(m, n, p, "layer")
    bott = m.new_int_var(0, math.ceil(TIME_RESOLUTION * 1.01) + 1, "bottleneck")
    for k, (g, send) in enumerate(zip(groups, sends, strict=True)):
        grp = pr.groups[g]
        layers = [i for i in range(n) if k in x[i]]
        m.add(sum(round(grp.time[i] * q) * x[i][k] for i in layers) + round(send * q) <= bott)
        add_stage_memory(m, x, k, layers, grp.memory, grp.peak or (0.0,) * n, grp.memory_limit)
    m.minimize(bott)
    return m, y, q

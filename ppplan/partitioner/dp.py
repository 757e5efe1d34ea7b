"""Exact contiguous stage partitioning: minimise the slowest stage under a per-stage memory limit.

Pure numpy, no I/O. The problem is a min-max ("bottleneck") contiguous partition with three
extensions the planner needs:

* a per-stage memory limit over additive unit memory plus a non-additive transient peak (a stage
  needs the largest workspace of its units, not their sum);
* a send time added to every stage but the last (the activation transfer to the next stage), which
  may differ per stage index (NVLink inside a node, the network across nodes);
* ties broken toward balanced KV headroom: among all cuts whose slowest stage equals the optimum,
  the one that maximises the smallest stage's ratio of KV room to KV need (the engines size the KV
  cache by the tightest stage).

Both criteria are solved exactly by dynamic programming over (stage, last unit) in two passes: pass
one finds the optimal bottleneck B*; pass two maximises the tie-break among cuts with every stage
≤ B*. (A single lexicographic DP would not be exact: the pair order is not monotone under max.)
Cost: O(p · n²) with numpy over (n+1)² matrices. The returned numbers are those of
:func:`~partitioner.problem.evaluate_cut` on the cut found (the matrices take stage sums the same
way, so they agree exactly).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from ppplan.partitioner.problem import (
    MEMORY_REL_TOL,
    PartitionProblem,
    PartitionSolution,
    Shortfall,
    evaluate_cut,
)

__all__ = ["solve_partition"]

GIB = 1024**3


def _matrices(pr: PartitionProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    n = len(pr.time)
    t = np.asarray(pr.time, dtype=np.float64)
    pt = np.concatenate(([0.0], np.cumsum(t)))
    i_idx = np.arange(n + 1)[:, None]
    j_idx = np.arange(n + 1)[None, :]
    valid = j_idx > i_idx
    cost = np.where(valid, pt[None, :] - pt[:, None], np.inf)
    mem = np.zeros((n + 1, n + 1))
    if pr.memory is not None:
        pm = np.concatenate(([0.0], np.cumsum(np.asarray(pr.memory, dtype=np.float64))))
        mem = pm[None, :] - pm[:, None]
    if pr.peak is not None:
        peak = np.asarray(pr.peak, dtype=np.float64)
        a = np.where(np.arange(n)[None, :] >= np.arange(n)[:, None], peak[None, :], -np.inf)
        a = np.maximum.accumulate(a, axis=1)  # a[i, j] = max(peak[i..j])
        pk = np.zeros((n + 1, n + 1))
        pk[:n, 1:] = np.maximum(a, 0.0)
        mem = mem + pk
    mem = np.where(valid, mem, np.inf)
    kv = None
    if pr.kv_memory is not None:
        pkv = np.concatenate(([0.0], np.cumsum(np.asarray(pr.kv_memory, dtype=np.float64))))
        kv = pkv[None, :] - pkv[:, None]
    return cost, mem, kv


StageBlock = Callable[[int, slice, slice], np.ndarray]


def _minmax(stage: StageBlock, p: int, n: int) -> tuple[float, list[np.ndarray]]:
    """Exact min over cuts of the max stage value; ``stage(k, rows, cols)`` gives stage k's values
    for starts ``rows`` and ends ``cols`` (+inf forbids).

    Stage k (0-based) of p can only end at units k+1 .. n-(p-1-k); only that window is computed.
    """
    f = np.full(n + 1, np.inf)
    f[1 : n - p + 2] = stage(0, slice(0, 1), slice(1, n - p + 2))[0]  # the first stage starts at unit 0
    args: list[np.ndarray] = []
    for k in range(1, p):
        lo_i, hi_i = k, n - p + k + 1
        lo_j, hi_j = k + 1, n - p + k + 2
        cand = np.maximum(f[lo_i:hi_i, None], stage(k, slice(lo_i, hi_i), slice(lo_j, hi_j)))
        rel = np.argmin(cand, axis=0)
        g = np.full(n + 1, np.inf)
        g[lo_j:hi_j] = cand[rel, np.arange(hi_j - lo_j)]
        arg = np.zeros(n + 1, dtype=np.int64)
        arg[lo_j:hi_j] = rel + lo_i
        f = g
        args.append(arg)
    return float(f[n]), args


def _cut(args: list[np.ndarray], n: int) -> tuple[int, ...]:
    ends = [n]
    j = n
    for arg in reversed(args):
        j = int(arg[j])
        ends.append(j)
    ends.reverse()  # ends[0] = end of stage 0 ... ends[-1] = n
    starts = [0, *ends[:-1]]
    return tuple(e - s for s, e in zip(starts, ends, strict=True))


def _fmt_gib(b: float) -> str:
    return f"{b / GIB:.1f} GiB"


def solve_partition(pr: PartitionProblem, *, tie_break: bool = True, explain: bool = True) -> PartitionSolution:
    """Solve a partition instance exactly (see module doc). Never raises for an infeasible instance.

    Args:
        pr: the instance.
        tie_break: run pass two (KV-headroom tie-break); without it the cut is *an* optimal one and
            ``headroom`` is NaN. The search scores configurations without it.
        explain: on infeasibility, find the least-memory cut to name the stage that does not fit.

    Returns:
        Status 'optimal' with the cut and its :func:`~partitioner.problem.evaluate_cut` numbers, or
        'infeasible' with a reason naming the stage, what it needs and the limit ("stage 3 (units
        40-59) needs 91.2 GiB, limit 72.0 GiB").
    """
    t0 = time.perf_counter()
    n, p = len(pr.time), pr.stages
    cost, mem, kv = _matrices(pr)
    adds = pr.stage_adds()
    scale = pr.speeds()
    limits = pr.stage_limits()

    uniform = len(set(limits)) == 1
    if uniform:  # one mask for every stage (the common, homogeneous case): computed once
        lim0 = limits[0]
        fit_cost = cost if lim0 == math.inf else np.where(mem <= lim0 * (1 + MEMORY_REL_TOL), cost, np.inf)

    def time_block(k: int, rows: slice, cols: slice) -> np.ndarray:
        if uniform:
            c = fit_cost[rows, cols]
            return c * scale[k] + adds[k] if scale[k] != 1.0 else c + adds[k]
        c = cost[rows, cols] * scale[k] + adds[k]
        if limits[k] == math.inf:
            return c
        return np.where(mem[rows, cols] <= limits[k] * (1 + MEMORY_REL_TOL), c, np.inf)

    best, args = _minmax(time_block, p, n)
    if not math.isfinite(best):
        if not explain:
            return PartitionSolution(
                status="infeasible", solver="dp", reason="does not fit in memory", wall_s=time.perf_counter() - t0
            )
        return _infeasible(pr, mem, limits, t0)
    head = math.nan
    if tie_break:
        head, args = _tie_break(best, time_block, mem, kv, limits, uniform, p, n)
    ev = evaluate_cut(pr, _cut(args, n))
    return PartitionSolution(
        status="optimal",
        solver="dp",
        sizes=ev.sizes,
        bottleneck=ev.bottleneck,
        stage_times=ev.stage_times,
        stage_memory=ev.stage_memory,
        bound=ev.bottleneck,
        gap=0.0,
        headroom=head,
        wall_s=time.perf_counter() - t0,
    )


def _tie_break(
    best: float,
    time_block: StageBlock,
    mem: np.ndarray,
    kv: np.ndarray | None,
    limits: tuple[float, ...],
    uniform: bool,
    p: int,
    n: int,
) -> tuple[float, list[np.ndarray]]:
    """Pass two: among cuts with every stage <= ``best``, maximise the smallest headroom score."""
    tol = best * (1 + MEMORY_REL_TOL) + 1e-15

    def neg_score(k: int, rows: slice, cols: slice) -> np.ndarray:
        m = mem[rows, cols]
        if kv is not None and limits[k] < math.inf:
            kvb = kv[rows, cols]
            with np.errstate(divide="ignore", invalid="ignore"):
                return -np.where(kvb > 0, (limits[k] - (m - kvb)) / kvb, np.inf)
        if limits[k] < math.inf:
            return m - limits[k]
        return m

    full = (slice(0, n + 1), slice(0, n + 1))
    neg_all = neg_score(0, *full) if uniform else None

    def score_block(k: int, rows: slice, cols: slice) -> np.ndarray:
        ns = neg_all[rows, cols] if neg_all is not None else neg_score(k, rows, cols)
        return np.where(time_block(k, rows, cols) <= tol, ns, np.inf)

    neg_head, args = _minmax(score_block, p, n)
    return -neg_head, args


def _infeasible(pr: PartitionProblem, mem: np.ndarray, limits: tuple[float, ...], t0: float) -> PartitionSolution:
    n, p = len(pr.time), pr.stages
    single = np.array([mem[i, i + 1] for i in range(n)])
    worst_unit = int(np.argmax(single))
    if single[worst_unit] > max(limits):
        return PartitionSolution(
            status="infeasible",
            solver="dp",
            reason=f"unit {worst_unit} alone needs {_fmt_gib(single[worst_unit])}, limit {_fmt_gib(max(limits))}",
            shortfall=Shortfall(
                stage=None,
                first_unit=worst_unit,
                last_unit=worst_unit,
                needed_bytes=float(single[worst_unit]),
                limit_bytes=max(limits),
            ),
            wall_s=time.perf_counter() - t0,
        )
    # the cut that minimises the largest overshoot of a stage's limit: even it does not fit
    _, args = _minmax(lambda k, r, c: mem[r, c] - limits[k], p, n)
    ev = evaluate_cut(pr, _cut(args, n))
    needs = ev.stage_memory
    k = max(range(p), key=lambda i: needs[i] - limits[i])
    a, b = ev.bounds[k]
    return PartitionSolution(
        status="infeasible",
        solver="dp",
        sizes=ev.sizes,
        reason=f"stage {k} (units {a}-{b}) needs {_fmt_gib(needs[k])}, limit {_fmt_gib(limits[k])}, "
        f"in the cut into {p} stages that overshoots its limits least",
        stage_memory=needs,
        shortfall=Shortfall(stage=k, first_unit=a, last_unit=b, needed_bytes=needs[k], limit_bytes=limits[k]),
        wall_s=time.perf_counter() - t0,
    )

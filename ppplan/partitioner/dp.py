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
Cost: O(p · n²) with numpy over (n+1)² matrices.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ppplan.core.errors import PpplanError

__all__ = ["PartitionProblem", "PartitionResult", "solve_partition", "stage_bounds"]

_REL_TOL = 1e-9
GIB = 1024**3


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionProblem:
    """A contiguous partition instance. Units are indexed 0..n-1; stages take consecutive units."""

    time: tuple[float, ...]
    """seconds each unit adds to its stage's time"""
    stages: int
    """number of stages p (1 ≤ p ≤ n); every stage holds at least one unit"""
    memory: tuple[float, ...] | None = None
    """bytes each unit adds to its stage's memory; None means 0"""
    memory_limit: float | None = None
    """bytes a stage may hold (sum of memory + largest peak); None means unlimited"""
    peak: tuple[float, ...] | None = None
    """transient bytes of each unit; a stage needs the largest of its units' peaks"""
    send_time: tuple[float, ...] | None = None
    """seconds added to stage k for k < p-1 (its send to stage k+1); length p-1"""
    kv_memory: tuple[float, ...] | None = None
    """bytes of ``memory`` that are KV cache at the target load (for the headroom tie-break)"""
    stage_speed: tuple[float, ...] | None = None
    """time multiplier per stage (heterogeneous GPUs: 2.0 = this stage's GPUs are twice as slow)"""
    stage_memory_limit: tuple[float, ...] | None = None
    """bytes per stage, overriding ``memory_limit`` (heterogeneous GPUs)"""

    def __post_init__(self) -> None:
        n = len(self.time)
        if n == 0:
            raise PpplanError("time", rule="needs at least one unit, got an empty list")
        if not isinstance(self.stages, int) or self.stages < 1:
            raise PpplanError("stages", rule=f"must be a positive integer, got {self.stages!r}")
        if self.stages > n:
            raise PpplanError("stages", rule=f"{self.stages} stages need at least {self.stages} units, got {n}")
        for name in ("time", "memory", "peak", "kv_memory"):
            vec = getattr(self, name)
            if vec is None:
                continue
            if len(vec) != n:
                raise PpplanError(name, rule=f"has {len(vec)} entries, time has {n}; one per unit is required")
            for i, v in enumerate(vec):
                if not math.isfinite(v) or v < 0:
                    raise ValueError(f"{name}[{i}]: must be a finite number ≥ 0, got {v!r}")
            if not math.isfinite(sum(vec)) or sum(vec) > 1e300:
                raise PpplanError(name, rule="the sum of its entries overflows a float; scale the values down")
        if self.send_time is not None:
            if len(self.send_time) != self.stages - 1:
                raise PpplanError(
                    "send_time",
                    rule=f"needs {self.stages - 1} entries (one per stage but the last), got {len(self.send_time)}",
                )
            for i, v in enumerate(self.send_time):
                if not math.isfinite(v) or v < 0:
                    raise PpplanError(f"send_time[{i}]", rule=f"must be a finite number ≥ 0, got {v!r}")
        for name in ("stage_speed", "stage_memory_limit"):
            vec = getattr(self, name)
            if vec is None:
                continue
            if len(vec) != self.stages:
                raise PpplanError(name, rule=f"needs {self.stages} entries (one per stage), got {len(vec)}")
            for i, v in enumerate(vec):
                if not math.isfinite(v) or v <= 0:
                    raise ValueError(f"{name}[{i}]: must be a finite number > 0, got {v!r}")
        if self.memory_limit is not None and self.stage_memory_limit is not None:
            raise PpplanError(
                "memory_limit", rule="give either one limit for every stage or stage_memory_limit, not both"
            )
        if self.memory_limit is not None and (not math.isfinite(self.memory_limit) or self.memory_limit <= 0):
            raise PpplanError("memory_limit", rule=f"must be a positive number of bytes, got {self.memory_limit!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionResult:
    """The solver's answer. ``status`` is 'optimal' or 'infeasible' (then ``reason`` says why)."""

    status: Literal["optimal", "infeasible"]
    sizes: tuple[int, ...] = ()
    """units per stage"""
    bottleneck: float = math.inf
    """time of the slowest stage, seconds (sends included)"""
    stage_times: tuple[float, ...] = ()
    stage_memory: tuple[float, ...] = ()
    """bytes per stage: sum of memory + largest peak"""
    headroom: float = math.inf
    """tie-break value reached: smallest (memory room / KV need) over stages; see module doc"""
    reason: str | None = None
    worst_stage: int | None = None
    needed_bytes: float | None = None
    limit_bytes: float | None = None
    detail: dict[str, float] = field(default_factory=dict)

    @property
    def optimal(self) -> bool:
        """True when the cut is proven optimal (always, for a feasible DP answer)."""
        return self.status == "optimal"

    @property
    def bounds(self) -> list[tuple[int, int]]:
        """(first, last) unit of each stage, inclusive."""
        return stage_bounds(self.sizes)


def stage_bounds(sizes: tuple[int, ...] | list[int]) -> list[tuple[int, int]]:
    """(first, last) unit index of each stage, inclusive, from the units per stage."""
    out, start = [], 0
    for s in sizes:
        out.append((start, start + s - 1))
        start += s
    return out


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


def solve_partition(pr: PartitionProblem, *, tie_break: bool = True, explain: bool = True) -> PartitionResult:
    """Solve a partition instance exactly (see module doc). Never raises for an infeasible instance.

    Args:
        pr: the instance.
        tie_break: run pass two (KV-headroom tie-break); without it the cut is *an* optimal one and
            ``headroom`` is not computed. The search scores configurations without it.
        explain: on infeasibility, find the least-memory cut to name the stage that does not fit.

    Returns:
        The optimal cut, or status 'infeasible' with a reason naming the stage, what it needs and
        the limit ("stage 3 (units 40-59) needs 91.2 GiB, limit 72.0 GiB").
    """
    n, p = len(pr.time), pr.stages
    cost, mem, kv = _matrices(pr)
    sends = pr.send_time or (0.0,) * (p - 1)
    adds = [*sends, 0.0]
    scale = pr.stage_speed or (1.0,) * p
    limits = _stage_limits(pr)

    uniform = len(set(limits)) == 1
    if uniform:  # one mask for every stage (the common, homogeneous case): computed once
        lim0 = limits[0]
        fit_cost = cost if lim0 == math.inf else np.where(mem <= lim0 * (1 + _REL_TOL), cost, np.inf)

    def time_block(k: int, rows: slice, cols: slice) -> np.ndarray:
        if uniform:
            c = fit_cost[rows, cols]
            return c * scale[k] + adds[k] if scale[k] != 1.0 else c + adds[k]
        c = cost[rows, cols] * scale[k] + adds[k]
        return c if limits[k] == math.inf else np.where(mem[rows, cols] <= limits[k] * (1 + _REL_TOL), c, np.inf)

    best, args = _minmax(time_block, p, n)
    if not math.isfinite(best):
        if not explain:
            return PartitionResult(status="infeasible", reason="does not fit in memory")
        return _infeasible(pr, mem, limits)
    if tie_break:
        # pass two: among cuts with every stage <= best, maximise the smallest headroom score
        tol = best * (1 + _REL_TOL) + 1e-15

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
        head = -neg_head
    else:
        head = math.nan
    sizes = _cut(args, n)
    times, mems = [], []
    for k, (a, b) in enumerate(stage_bounds(sizes)):
        times.append(float(cost[a, b + 1]) * scale[k] + adds[k])
        mems.append(float(mem[a, b + 1]))
    return PartitionResult(
        status="optimal",
        sizes=sizes,
        bottleneck=max(times),
        stage_times=tuple(times),
        stage_memory=tuple(mems),
        headroom=head,
    )


def _stage_limits(pr: PartitionProblem) -> list[float]:
    if pr.stage_memory_limit is not None:
        return [float(x) for x in pr.stage_memory_limit]
    lim = pr.memory_limit if pr.memory_limit is not None else math.inf
    return [lim] * pr.stages


def _infeasible(pr: PartitionProblem, mem: np.ndarray, limits: list[float]) -> PartitionResult:
    n, p = len(pr.time), pr.stages
    single = np.array([mem[i, i + 1] for i in range(n)])
    worst_unit = int(np.argmax(single))
    if single[worst_unit] > max(limits):
        return PartitionResult(
            status="infeasible",
            reason=f"unit {worst_unit} alone needs {_fmt_gib(single[worst_unit])}, limit {_fmt_gib(max(limits))}",
            needed_bytes=float(single[worst_unit]),
            limit_bytes=max(limits),
            detail={"unit": worst_unit},
        )
    # the cut that minimises the largest overshoot of a stage's limit: even it does not fit
    _, args = _minmax(lambda k, r, c: mem[r, c] - limits[k], p, n)
    sizes = _cut(args, n)
    bounds = stage_bounds(sizes)
    needs = [float(mem[a, b + 1]) for a, b in bounds]
    k = max(range(p), key=lambda i: needs[i] - limits[i])
    a, b = bounds[k]
    return PartitionResult(
        status="infeasible",
        sizes=sizes,
        reason=f"stage {k} (units {a}-{b}) needs {_fmt_gib(needs[k])}, limit {_fmt_gib(limits[k])}, "
        f"in the cut into {p} stages that overshoots its limits least",
        worst_stage=k,
        needed_bytes=needs[k],
        limit_bytes=limits[k],
        stage_memory=tuple(needs),
        detail={"first_unit": a, "last_unit": b},
    )

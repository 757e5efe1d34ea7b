"""The stage-partition problem, its one solution type and its one cut evaluator.

Both solvers (:mod:`partitioner.dp`, :mod:`partitioner.cpsat`) take a :class:`PartitionProblem` and
return a :class:`PartitionSolution`; whatever needs the cost of a given cut (the solvers' reported
numbers, the engines' default cuts, :func:`partitioner.validate.validate_plan`) calls
:func:`evaluate_cut`, so that the same cut always costs the same, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Literal

import numpy as np

from ppplan.core.errors import PpplanError

__all__ = [
    "MAX_UNITS",
    "MAX_WORK",
    "MEMORY_REL_TOL",
    "CutEvaluation",
    "PartitionProblem",
    "PartitionSolution",
    "Shortfall",
    "SolveStatus",
    "evaluate_cut",
    "stage_bounds",
]

MAX_UNITS = 2048
"""most units one instance may have: the exact DP holds several (units + 1)² float matrices
(2,048 units: about 200 MB; 10^5 units would need 75 GiB)"""
MAX_WORK = 2**28
"""most stages × units² one instance may ask for: the DP's time grows with it (2^28: a few seconds)"""

MEMORY_REL_TOL = 1e-9
"""relative slack on a stage memory limit: a stage within it fits (float noise is not a miss)"""

SolveStatus = Literal["optimal", "feasible", "infeasible", "timeout"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionProblem:
    """A contiguous partition instance. Units are indexed 0..n-1; stages take consecutive units.

    Raises:
        PpplanError: a malformed instance, naming the field (``time``, ``stages``, ``send_time`` …).
    """

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
        _check_counts(self)
        for name in ("time", "memory", "peak", "kv_memory"):
            _check_unit_vector(name, getattr(self, name), len(self.time))
        _check_send_time(self.send_time, self.stages)
        for name in ("stage_speed", "stage_memory_limit"):
            _check_stage_vector(name, getattr(self, name), self.stages)
        _check_memory_limit(self)

    @property
    def units(self) -> int:
        """Number of units n."""
        return len(self.time)

    def speeds(self) -> tuple[float, ...]:
        """Time multiplier of each stage (1.0 when not given)."""
        return self.stage_speed or (1.0,) * self.stages

    def stage_adds(self) -> tuple[float, ...]:
        """Seconds added to each stage: its send to the next stage, 0 for the last."""
        return (*(self.send_time or (0.0,) * (self.stages - 1)), 0.0)

    def stage_limits(self) -> tuple[float, ...]:
        """Bytes each stage may hold (``inf`` when unlimited)."""
        if self.stage_memory_limit is not None:
            return tuple(float(x) for x in self.stage_memory_limit)
        return (self.memory_limit if self.memory_limit is not None else math.inf,) * self.stages


def _check_counts(pr: PartitionProblem) -> None:
    n = len(pr.time)
    if n == 0:
        raise PpplanError("time", rule="needs at least one unit, got an empty list")
    if not isinstance(pr.stages, int) or pr.stages < 1:
        raise PpplanError("stages", value=pr.stages, rule="must be a positive integer")
    if pr.stages > n:
        raise PpplanError("stages", rule=f"{pr.stages} stages need at least {pr.stages} units, got {n}")
    if n > MAX_UNITS:
        raise PpplanError(
            "time",
            rule=f"{n:,} units exceed the maximum of {MAX_UNITS:,} (the exact solver's memory grows with "
            "units²); merge adjacent units",
        )
    if pr.stages * n * n > MAX_WORK:
        raise PpplanError(
            "stages",
            rule=f"{pr.stages} stages × {n:,}² units = {pr.stages * n * n:,} exceeds the maximum of {MAX_WORK:,} "
            "(the exact solver's time grows with stages × units²); use fewer stages or merge adjacent units",
        )


def _check_unit_vector(name: str, vec: tuple[float, ...] | None, n: int) -> None:
    if vec is None:
        return
    if len(vec) != n:
        raise PpplanError(name, rule=f"has {len(vec)} entries, time has {n}; one per unit is required")
    arr = np.asarray(vec, dtype=float)
    bad = np.flatnonzero(~(np.isfinite(arr) & (arr >= 0)))  # one vector check; the loop only to name the entry
    if bad.size:
        i = int(bad[0])
        raise PpplanError(f"{name}[{i}]", value=vec[i], rule="must be a finite number ≥ 0")
    total = float(arr.sum())
    if not math.isfinite(total) or total > 1e300:
        raise PpplanError(name, rule="the sum of its entries overflows a float; scale the values down")


def _check_send_time(send_time: tuple[float, ...] | None, stages: int) -> None:
    if send_time is None:
        return
    if len(send_time) != stages - 1:
        raise PpplanError(
            "send_time", rule=f"needs {stages - 1} entries (one per stage but the last), got {len(send_time)}"
        )
    for i, v in enumerate(send_time):
        if not math.isfinite(v) or v < 0:
            raise PpplanError(f"send_time[{i}]", value=v, rule="must be a finite number ≥ 0")


def _check_stage_vector(name: str, vec: tuple[float, ...] | None, stages: int) -> None:
    if vec is None:
        return
    if len(vec) != stages:
        raise PpplanError(name, rule=f"needs {stages} entries (one per stage), got {len(vec)}")
    for i, v in enumerate(vec):
        if not math.isfinite(v) or v <= 0:
            raise PpplanError(f"{name}[{i}]", value=v, rule="must be a finite number > 0")


def _check_memory_limit(pr: PartitionProblem) -> None:
    if pr.memory_limit is None:
        return
    if pr.stage_memory_limit is not None:
        raise PpplanError("memory_limit", rule="give either one limit for every stage or stage_memory_limit, not both")
    if not math.isfinite(pr.memory_limit) or pr.memory_limit <= 0:
        raise PpplanError("memory_limit", value=pr.memory_limit, rule="must be a positive number of bytes")


def stage_bounds(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """(first, last) unit index of each stage, inclusive, from the units per stage."""
    out, start = [], 0
    for s in sizes:
        out.append((start, start + s - 1))
        start += s
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class CutEvaluation:
    """What one cut of a :class:`PartitionProblem` costs, stage by stage."""

    sizes: tuple[int, ...]
    """units per stage"""
    stage_times: tuple[float, ...]
    """seconds per stage: its units' time × the stage's speed factor, plus its send"""
    stage_memory: tuple[float, ...]
    """bytes per stage: the sum of its units' memory plus the largest peak among them"""
    stage_limits: tuple[float, ...]
    """bytes each stage may hold (``inf`` when unlimited)"""
    stage_fits: tuple[bool, ...]
    """whether each stage is within its limit (up to the relative tolerance used)"""
    bottleneck: float
    """the slowest stage's time, seconds"""

    @property
    def fits(self) -> bool:
        """True when every stage is within its memory limit."""
        return all(self.stage_fits)

    @property
    def bounds(self) -> list[tuple[int, int]]:
        """(first, last) unit of each stage, inclusive."""
        return stage_bounds(self.sizes)


def evaluate_cut(pr: PartitionProblem, sizes: Sequence[int], *, rel_tol: float = MEMORY_REL_TOL) -> CutEvaluation:
    """Cost of cutting ``pr`` into stages of ``sizes`` units: per-stage time, memory and fit.

    Stage sums are differences of running totals (as the DP's matrices take them), so the DP's
    reported numbers and any other evaluation of the same cut agree exactly.

    Args:
        pr: the instance.
        sizes: units per stage, one entry per stage, each ≥ 1, summing to the number of units.
        rel_tol: relative slack on each stage's memory limit.

    Raises:
        PpplanError: ``sizes`` is not a cut of ``pr`` into its stages.
    """
    n, p = len(pr.time), pr.stages
    if len(sizes) != p or sum(sizes) != n or any(s < 1 for s in sizes):
        raise PpplanError("sizes", value=list(sizes), rule=f"must be {p} stage sizes ≥ 1 summing to {n} units")
    pt = list(accumulate(pr.time, initial=0.0))
    pm = list(accumulate(pr.memory, initial=0.0)) if pr.memory is not None else None
    speeds, adds, limits = pr.speeds(), pr.stage_adds(), pr.stage_limits()
    times, mems = [], []
    for k, (a, b) in enumerate(stage_bounds(sizes)):
        times.append((pt[b + 1] - pt[a]) * speeds[k] + adds[k])
        used = pm[b + 1] - pm[a] if pm is not None else 0.0
        mems.append(used + max(pr.peak[a : b + 1]) if pr.peak is not None else used)
    return CutEvaluation(
        sizes=tuple(sizes),
        stage_times=tuple(times),
        stage_memory=tuple(mems),
        stage_limits=limits,
        stage_fits=tuple(m <= lim * (1 + rel_tol) for m, lim in zip(mems, limits, strict=True)),
        bottleneck=max(times),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Shortfall:
    """Why an instance is infeasible: the stage (or the single unit) that does not fit."""

    stage: int | None
    """the stage that overshoots its limit most in the least-overshooting cut; None when one unit
    alone exceeds every limit"""
    first_unit: int
    last_unit: int
    """the units of that stage (inclusive), or the offending unit twice"""
    needed_bytes: float
    limit_bytes: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionSolution:
    """A solver's answer to a :class:`PartitionProblem`.

    ``status`` is 'optimal' (proven), 'feasible' (a cut, not proven optimal), 'infeasible' (no cut
    fits; ``reason`` says why, ``shortfall`` names the stage when the solver can tell) or 'timeout'
    (no cut found within the time limit).
    """

    status: SolveStatus
    solver: str
    """which solver answered: 'dp' or 'cpsat'"""
    sizes: tuple[int, ...] = ()
    """units per stage (for an infeasible DP answer: the cut that overshoots its limits least)"""
    bottleneck: float = math.inf
    """time of the slowest stage, seconds (sends included)"""
    stage_times: tuple[float, ...] = ()
    """seconds per stage"""
    stage_memory: tuple[float, ...] = ()
    """bytes per stage: sum of memory + largest peak"""
    bound: float = 0.0
    """proven lower bound on the bottleneck, seconds"""
    gap: float = math.inf
    """(bottleneck - bound) / bottleneck"""
    headroom: float = math.nan
    """DP tie-break value reached: smallest (memory room / KV need) over stages; NaN when not computed"""
    wall_s: float = 0.0
    """seconds the solver took"""
    reason: str | None = None
    """why there is no cut (infeasible, timeout)"""
    shortfall: Shortfall | None = None
    """the stage or unit that does not fit (infeasible answers of the DP)"""

    @property
    def optimal(self) -> bool:
        """True when the cut is proven optimal."""
        return self.status == "optimal"

    @property
    def has_cut(self) -> bool:
        """True when the answer carries a cut that fits ('optimal' or 'feasible')."""
        return self.status in ("optimal", "feasible")

    @property
    def bounds(self) -> list[tuple[int, int]]:
        """(first, last) unit of each stage, inclusive."""
        return stage_bounds(self.sizes)

"""The batch decision: how many sequences each replica of a TP × PP × replicas layout runs.

The batch is searched, not typed: for every degrees the planner looks for the micro-batch size b
(sequences per replica = b × PP, as PP micro-batches) that serves the objective within the SLOs:

* no request rate, objective throughput or min-gpus: the **largest** b that meets the SLOs and
  fits in memory (throughput per GPU grows with the batch, TPOT and TTFT grow with it too);
* a request rate (or output rate): the **smallest** b that sustains the rate within the SLOs
  (more batch only costs memory once the rate is served);
* objective latency with no rate: b = 1.

Each boundary is found by bisection, first on optimistic scores (a lower bound on the slowest
stage, no cut solved: cheap) over a grid of batch sizes (1, 2, 3, 4, 6, 8, 12, …, so that degrees
share cost vectors), then with exact cuts at every batch size between the grid points around it.
Exact cuts only move the boundary towards smaller batches (largest mode) or larger ones (smallest
mode). A pinned concurrency skips the search.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

from ppplan.partitioner.costs import Costs, Evaluation
from ppplan.partitioner.space import MAX_SEQUENCES, Layout

__all__ = ["BatchSearch", "Degrees3", "Mode", "bisect_largest", "largest", "smallest"]

_GRID = sorted({m * 2**k for k in range(15) for m in (2, 3)} | {1})
"""1, 2, 3, 4, 6, 8, 12, 16, …: the optimistic search's micro-batch sizes (exact cuts refine between)"""

Degrees3 = tuple[int, int, int]
"""(TP, PP, replicas)"""
Mode = Literal["largest", "smallest", "one", "pinned"]


def _ok(e: Evaluation) -> bool:
    return e.feasible and e.slo_met


def largest(ok: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """Largest b in [lo, hi] with ok(b), for ok true below a threshold; None when ok(lo) is false.
    ok(hi) is tried first: often no bound binds at the top (no SLO given), and then ok(lo) is not
    needed."""
    if hi < lo:
        return None
    if ok(hi):
        return hi
    if not ok(lo):
        return None
    return bisect_largest(ok, lo, hi - 1)


def bisect_largest(ok: Callable[[int], bool], lo: int, hi: int) -> int:
    """Largest b in [lo, hi] with ok(b) by bisection, for ok true below a threshold and ok(lo) known
    true (``lo`` when no other b passes); ok(hi) is tested only when the bisection reaches it."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def smallest(ok: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """Smallest b in [lo, hi] with ok(b), for ok true above a threshold; None when ok(hi) is false."""
    if hi < lo or not ok(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


class BatchSearch:
    """Optimistic and exact batch choices per degrees, cached; ``exact`` keeps every exact
    evaluation made (the candidates of the Pareto front)."""

    def __init__(self, costs: Costs, optimistic: Callable[[Costs, Layout], Evaluation]) -> None:
        self.costs = costs
        self._optimistic = optimistic
        req = costs.req
        if req.concurrency is not None:
            self.mode: Mode = "pinned"
        elif req.rate is not None:
            self.mode = "smallest"
        elif req.objective == "latency":
            self.mode = "one"
        else:
            self.mode = "largest"
        self._opt: dict[tuple[int, int, int, int], Evaluation] = {}
        self._exact: dict[tuple[int, int, int, int], Evaluation] = {}
        self._bmax: dict[tuple[int, int], int] = {}
        self._grids: dict[tuple[int, int], list[int]] = {}
        self._cuts: dict[tuple[int, int], tuple[int, ...]] = {}
        """the last cut solved per (TP, PP): a cut of any replica count or batch of those degrees"""

    # ---- layouts and evaluations -------------------------------------------------------------
    def layout(self, d: Degrees3, b: int) -> Layout:
        """The layout of degrees ``d`` at micro-batch size ``b`` (or the pinned concurrency)."""
        t, p, r = d
        conc = self.costs.req.concurrency
        if conc is not None:
            return self.costs.make_layout(t, p, r, math.ceil(conc / r))
        return self.costs.make_layout(t, p, r, b * p)

    def optimistic(self, d: Degrees3, b: int) -> Evaluation:
        """The optimistic evaluation of ``d`` at ``b`` (cached)."""
        key = (*d, b)
        hit = self._opt.get(key)
        if hit is None:
            hit = self._opt[key] = self._optimistic(self.costs, self.layout(d, b))
        return hit

    def exact(self, d: Degrees3, b: int) -> Evaluation:
        """The exact evaluation of ``d`` at ``b`` (cached)."""
        key = (*d, b)
        hit = self._exact.get(key)
        if hit is None:
            hit = self._exact[key] = self.costs.evaluate(self.layout(d, b))
            if hit.sizes is not None:
                self._cuts[d[:2]] = hit.sizes
        return hit

    def at_known_cut(self, d: Degrees3, b: int) -> Evaluation:
        """``d`` at ``b`` scored at the cut already solved for ``d`` when it fits there (no DP; its
        slowest stage is at most a few percent above the optimal cut's), else exactly."""
        known = self._exact.get((*d, b))
        if known is not None:
            return known
        if d[:2] in self._cuts:
            e = self.costs.with_cut(self.layout(d, b), self._cuts[d[:2]])
            if e is not None:
                return e
        return self.exact(d, b)

    def meets(self, d: Degrees3, b: int) -> bool:
        """Whether some cut of ``d`` at ``b`` fits and meets the SLOs, solving a cut only when the
        optimistic bound says it may and the last cut found for ``d`` does not already show it."""
        if not _ok(self.optimistic(d, b)):
            return False
        known = self._exact.get((*d, b))
        if known is None and d[:2] in self._cuts:
            e = self.costs.with_cut(self.layout(d, b), self._cuts[d[:2]])
            if e is not None and _ok(e):
                return True
        return _ok(known if known is not None else self.exact(d, b))

    @property
    def exact_evaluations(self) -> list[Evaluation]:
        """Every exact evaluation made, feasible or not."""
        return list(self._exact.values())

    def max_b(self, d: Degrees3) -> int:
        """Largest micro-batch size whose sequences fit in memory at any cut (optimistic); 0 when
        not even one sequence per micro-batch fits."""
        t, p, _ = d
        key = (t, p)
        if key not in self._bmax:
            self._bmax[key] = self.costs.max_sequences(t, p, max(p, MAX_SEQUENCES)) // p
        return self._bmax[key]

    def grid(self, d: Degrees3) -> list[int]:
        """Micro-batch sizes the optimistic search visits: 1, 2, 3, 4, 6, 8, 12, … (steps of at most
        a half, so that the degrees share their cost vectors) and the memory limit."""
        key = (d[0], d[1])
        hit = self._grids.get(key)
        if hit is None:
            top = self.max_b(d)
            hit = self._grids[key] = [*(b for b in _GRID if b < top), top] if top else []
        return hit

    # ---- the choice ---------------------------------------------------------------------------
    def optimistic_choice(self, d: Degrees3) -> tuple[int, Evaluation]:
        """The batch this search mode would pick for ``d`` on optimistic scores, and its score.

        When no batch meets the SLOs, the batch closest to them (the smallest batch in largest
        mode, the largest in smallest mode); when none fits, an infeasible evaluation."""
        grid = self.grid(d)
        if self.mode in ("pinned", "one") or not grid:
            return 1, self.optimistic(d, 1)
        ok = lambda i: _ok(self.optimistic(d, grid[i]))  # noqa: E731
        if self.mode == "largest":
            i = largest(ok, 0, len(grid) - 1)
            b = grid[0] if i is None else grid[i]
        else:
            i = smallest(ok, 0, len(grid) - 1)
            b = grid[-1] if i is None else grid[i]
        return b, self.optimistic(d, b)

    def exact_choice(self, d: Degrees3, b_opt: int) -> Evaluation:
        """The exact counterpart of :meth:`optimistic_choice` on the grid, starting from its batch
        ``b_opt`` (:meth:`refine` then searches between the grid points)."""
        e = self.exact(d, b_opt)
        if self.mode in ("pinned", "one") or _ok(e):
            return e
        grid = self.grid(d)
        ok = lambda i: self.meets(d, grid[i])  # noqa: E731
        pos = grid.index(b_opt)
        if self.mode == "largest":
            i = largest(ok, 0, pos - 1)
            return self.exact(d, grid[0 if i is None else i])
        for b in grid[pos + 1 :]:  # upwards until the SLOs hold; memory only gets tighter
            if self.meets(d, b):
                return self.exact(d, b)
            if not self.costs.fits(d[0], d[1], self.layout(d, b).sequences):
                break
        if e.feasible:
            return e
        # nothing meets the SLOs and the optimistic batch does not fit any cut: the largest that does
        i = largest(lambda j: self.exact(d, grid[j]).feasible, 0, pos)
        return self.exact(d, grid[0 if i is None else i])

    def refine(self, e: Evaluation) -> Evaluation:
        """``e`` (a grid choice) moved to the exact boundary between its grid neighbours: the largest
        batch that still meets the SLOs (largest mode) or the smallest (smallest mode)."""
        lay = e.layout
        if self.mode in ("pinned", "one") or not _ok(e):
            return e
        d = lay.degrees
        b0, grid = lay.micro_batch_size, self.grid(d)
        ok = lambda x: self.meets(d, x)  # noqa: E731
        if self.mode == "largest":
            nxt = next((g for g in grid if g > b0), b0)
            b = largest(ok, b0, nxt)
        else:
            prev = max((g for g in grid if g < b0), default=b0)
            b = smallest(ok, prev, b0)
        return self.exact(d, b0 if b is None else b)

    def ladder(self, d: Degrees3) -> list[int]:
        """Micro-batch sizes for the Pareto front of ``d``: powers of two up to the memory limit."""
        return [b for b in self.grid(d) if b & (b - 1) == 0 or b == self.max_b(d)]

"""Exact pipeline placement on a mixed cluster: PP, stages per GPU group, group order and the cut.

One TP degree for every stage (what vLLM and SGLang run). Each group hosts up to ``nodes ×
(gpus_per_node // tp)`` stages, filled node by node in pipeline order (stage ``q`` of a group runs
on its node ``q // stages_per_node``: how launch scripts number ranks); a group's stages are
contiguous in the pipeline, groups follow one another in some order, and a group may host none.
Stage ``k`` costs its layers' time *on its group's GPU kind* (per-kind vectors, not a speed factor:
an A100 is not a uniformly slower H100) plus its send to stage ``k + 1``: inside a node, between
two nodes of the group, or to another group (always across the network); the last stage sends
nothing. A stage fits when its layers' memory plus their largest workspace is within its group's
per-GPU limit.

The search is exact, a DP over stage assignments: a state is (groups used, the group that comes
next, stages placed) with a vector f[j] = the best slowest stage of any prefix that ends at layer
j; prefixes that reach one state have the same futures, so they merge into their pointwise
minimum, and the work grows with the subsets of groups rather than their orders. A group's stages
extend the vector one ``min_i max(f[i], C[i, j])`` over an (n+1)² matrix at a time; branch and
bound (prefix value and remaining work over the remaining stage slots against the incumbent)
skips states that cannot win. Two 8-GPU groups at TP 1 take ~150 such steps, five groups at TP 2
~7,000. The winner's cut is rebuilt by an argmin DP and costed by :func:`evaluate_hetero_cut`
(the one evaluator: solver, engine baselines and tests agree bit for bit); ties in the bottleneck
go to fewer stages, then to the cut with the most balanced KV headroom (as
:func:`partitioner.dp.solve_partition` does). :mod:`partitioner.hetero_cpsat` re-solves a placement
with CP-SAT (hinted with this cut, gap reported).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ppplan.partitioner.hetero_problem import (
    HeteroCut,
    HeteroProblem,
    KindVectors,
    StageGroup,
    StagePlace,
    argmin_chain,
    cluster_problem,
    cost_matrix,
    engine_cuts,
    evaluate_hetero_cut,
    memory_matrix,
    neg_headroom,
    placement,
)
from ppplan.partitioner.problem import MEMORY_REL_TOL

__all__ = [
    "HeteroCut",
    "HeteroProblem",
    "HeteroSolution",
    "KindVectors",
    "StageGroup",
    "StagePlace",
    "cluster_problem",
    "engine_cuts",
    "evaluate_hetero_cut",
    "placement",
    "solve_hetero",
    "solve_hetero_by_pp",
    "solve_placement",
]


# ---- the search ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class HeteroSolution:
    """The best placement and cut, with the engines' even cuts on the same placement."""

    status: str
    """'optimal' or 'infeasible'"""
    tp: int
    groups: int
    """GPU groups of the problem"""
    cut: HeteroCut | None = None
    baselines: dict[str, HeteroCut] = field(default_factory=dict)
    headroom: float = math.nan
    """smallest KV room / KV need over the stages of the cut (NaN without KV vectors)"""
    explored: int = 0
    """DP steps (one (n+1)² min-max each) the search ran"""
    wall_s: float = 0.0
    reason: str | None = None

    @property
    def optimal(self) -> bool:
        """True when a fitting cut was found (it is optimal)."""
        return self.status == "optimal"

    @property
    def bottleneck(self) -> float:
        """The slowest stage's seconds (``inf`` when infeasible)."""
        return self.cut.bottleneck if self.cut is not None else math.inf

    @property
    def pp(self) -> int:
        """Stages (0 when infeasible)."""
        return self.cut.pp if self.cut is not None else 0

    @property
    def stages_per_group(self) -> tuple[int, ...]:
        """Stages on each group of the problem (0 for unused groups)."""
        out = [0] * self.groups
        if self.cut is not None:
            for g, c in zip(self.cut.order, self.cut.counts, strict=True):
                out[g] = c
        return tuple(out)


_BOUND_SLACK = 1e-12

_Ids = int | np.ndarray
"""prefix id of each end layer of a vector, or one id for all of them"""


def _merge(a: tuple[np.ndarray, _Ids], b: tuple[np.ndarray, _Ids], n: int, dtype: type) -> tuple[np.ndarray, _Ids]:
    """Pointwise best of two prefix vectors reaching one state (ties keep ``a``), with their ids."""
    better = b[0] < a[0]
    if not better.any():
        return a

    def ids(x: _Ids) -> np.ndarray:
        return np.full(n + 1, x, dtype=dtype) if isinstance(x, int) else x

    return np.where(better, b[0], a[0]), np.where(better, ids(b[1]), ids(a[1]))


class _Search:
    """Exact search over (group order, stage counts): a DP over subsets of groups (see :meth:`run`)."""

    def __init__(self, pr: HeteroProblem, by_pp: bool) -> None:
        self.pr, self.by_pp, self.n = pr, by_pp, pr.layers
        n = self.n
        self.mem = [memory_matrix(g, n) for g in pr.groups]
        self.cost = [cost_matrix(g, m, n) for g, m in zip(pr.groups, self.mem, strict=True)]
        self.shifted: dict[tuple[int, float], np.ndarray] = {}
        mins = np.min(np.array([g.time for g in pr.groups], dtype=np.float64), axis=0)
        self.rest_work = np.concatenate((np.cumsum(mins[::-1])[::-1], [0.0]))  # from layer j to the end
        self.rest_max = np.concatenate((np.maximum.accumulate(mins[::-1])[::-1], [0.0]))
        self.rest_bound: dict[int, np.ndarray] = {}  # by free stage slots: max(rest work / slots, rest max)
        self.best: dict[int, tuple[float, tuple[int, ...], tuple[int, ...]]] = {}
        self.steps = 0
        # a prefix (groups in order, stages on each) is one integer, a digit g·(n+1)+t per group:
        # extending every prefix of a vector is one multiply-add (Python ints where int64 overflows)
        self.base = len(pr.groups) * (n + 1) + 1
        self.id_dtype: type = np.int64 if self.base ** len(pr.groups) < 2**62 else object
        # fastest groups first: a good incumbent early prunes more
        self.try_order = sorted(range(len(pr.groups)), key=lambda g: sum(pr.groups[g].time))
        self.cap = [min(g.max_stages, n) for g in pr.groups]

    def matrix(self, g: int, send: float) -> np.ndarray:
        key = (g, send)
        m = self.shifted.get(key)
        if m is None:
            m = self.cost[g] + send if send else self.cost[g]
            self.shifted[key] = m
        return m

    def threshold(self, lo_pp: int, hi_pp: int) -> tuple[float, int]:
        """(value, stages) a completion with lo_pp..hi_pp stages must beat."""
        pins = [self.pr.pp] if self.pr.pp is not None else list(range(lo_pp, hi_pp + 1))
        pins = [p for p in pins if lo_pp <= p <= hi_pp]
        if not pins:
            return -math.inf, 0
        if self.by_pp:
            vals = [self.best.get(p, (math.inf,))[0] for p in pins]
            return max(vals), hi_pp + 1
        v, _, c = min(self.best.values(), default=(math.inf, (), ()), key=lambda x: (x[0], sum(x[2])))
        return v, sum(c) if c else hi_pp + 1

    def offer(self, value: float, order: tuple[int, ...], counts: tuple[int, ...]) -> None:
        p = sum(counts)
        if not math.isfinite(value) or (self.pr.pp is not None and p != self.pr.pp):
            return
        key = p if self.by_pp else 0
        old = self.best.get(key)
        if old is None or (value, p) < (old[0], sum(old[2])):
            self.best[key] = (value, order, counts)

    def pruned(self, f: np.ndarray, placed: int, free: int) -> bool:
        """Every completion of prefix ``f`` (``placed`` stages, up to ``free`` more) is no better."""
        if free < 1:
            return True
        rest = self.rest_bound.get(free)
        if rest is None:
            rest = self.rest_bound[free] = np.maximum(self.rest_work / free, self.rest_max)
        lb = np.maximum(f, rest)
        # deflated: the bound sums layers one by one, the DP by prefix differences (last-bit noise
        # must not prune a tie that has fewer stages)
        bound = float(lb[placed : self.n].min()) * (1 - _BOUND_SLACK) if placed < self.n else math.inf
        value, stages = self.threshold(placed + 1, min(self.n, placed + free))
        return bound > value or (bound >= value and placed + 1 >= stages)

    def step_arg(self, f: np.ndarray, src: _Ids, g: int, send: float, lo: int) -> tuple[np.ndarray, _Ids]:
        """One more stage on ``g``: the new prefix vector and, per end layer, the prefix id it
        extends (one id for the whole vector while a single prefix reached the state: no argmin)."""
        self.steps += 1
        out = np.full(self.n + 1, np.inf)
        cand = np.maximum(f[lo : self.n, None], self.matrix(g, send)[lo : self.n, lo + 1 :])
        if isinstance(src, int):
            out[lo + 1 :] = cand.min(axis=0)
            return out, src
        best = cand.argmin(axis=0)
        out[lo + 1 :] = cand[best, np.arange(self.n - lo)]
        arg: np.ndarray = np.zeros(self.n + 1, dtype=self.id_dtype)
        arg[lo + 1 :] = src[best + lo]
        return out, arg

    def code(self, g: int, t: int) -> int:
        """Digit of ``t`` stages on group ``g`` in a prefix id (ids are base-``self.base`` numbers)."""
        return g * (self.n + 1) + t

    def decode(self, pid: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(order, counts) of prefix id ``pid``."""
        order: list[int] = []
        counts: list[int] = []
        while pid:
            pid, digit = divmod(pid, self.base)
            g, t = divmod(digit, self.n + 1)
            order.append(g)
            counts.append(t)
        return tuple(reversed(order)), tuple(reversed(counts))

    def run(self) -> None:
        """DP over states (groups used, next group, stages placed), by number of groups used.

        Prefixes that reach the same state have the same futures, so they merge into their
        pointwise minimum (min over prefixes and over the boundary layer commute): the work grows
        with the subsets of groups, not with their orders.
        """
        n = self.n
        f0 = np.full(n + 1, np.inf)
        src0: _Ids = 0
        f0[0] = 0.0
        layer = {(0, h, 0): (f0, src0) for h in self.try_order if self.cap[h] > 0}
        while layer:
            nxt: dict[tuple[int, int, int], tuple[np.ndarray, _Ids]] = {}
            for (used, h, placed), (f, src) in layer.items():
                self.expand(used, h, placed, f, src, nxt)
            layer = nxt

    def expand(
        self,
        used: int,
        g: int,
        placed: int,
        f: np.ndarray,
        src: _Ids,
        nxt: dict[tuple[int, int, int], tuple[np.ndarray, _Ids]],
    ) -> None:
        """Every stage count of group ``g`` after prefix ``f``: offer the pipelines that end with
        it, and merge those that continue into the next layer's states."""
        grp, m = self.pr.groups[g], min(self.cap[g], self.n - placed)
        now = used | (1 << g)
        rest = [h for h in self.try_order if not now >> h & 1 and self.cap[h] > 0]
        others = sum(self.cap[h] for h in rest)
        chain = [(f, src)]  # chain[t]: the prefix after t stages of g, each with its send inside g
        for q in range(m - 1):
            if self.pruned(chain[-1][0], placed + q, m - q + others):
                break
            chain.append(self.step_arg(*chain[-1], g, grp.send_after(q), placed + q))
        for t in range(len(chain), 0, -1):  # most stages first: usually the better incumbent
            (prev, psrc), lo = chain[t - 1], placed + t - 1
            self.steps += 1
            seg = np.maximum(prev[lo : self.n], self.cost[g][lo : self.n, self.n])
            i = int(seg.argmin())
            if math.isfinite(seg[i]):
                pid = psrc if isinstance(psrc, int) else int(psrc[lo + i])
                self.offer(float(seg[i]), *self.decode(pid * self.base + self.code(g, t)))
            if not rest or placed + t >= self.n or self.pruned(prev, lo, 1 + others):
                continue
            for h in rest:
                val, arg = self.step_arg(prev, psrc, g, self.pr.send_cross[g][h], lo)
                ids = arg * self.base + self.code(g, t)
                key = (now, h, placed + t)
                old = nxt.get(key)
                if old is None:
                    nxt[key] = (val, ids)
                else:
                    nxt[key] = _merge(old, (val, ids), self.n, self.id_dtype)


def _best_cut(
    pr: HeteroProblem, s: _Search, order: tuple[int, ...], counts: tuple[int, ...], tie_break: bool
) -> tuple[HeteroCut | None, float]:
    """The placement's optimal cut, ties broken toward balanced KV headroom (``tie_break``), and
    that headroom (NaN without the tie-break); None when no cut of the placement fits."""
    groups, sends = placement(pr, order, counts)
    n = pr.layers
    blocks = [s.matrix(g, x) for g, x in zip(groups, sends, strict=True)]
    best, sizes = argmin_chain(blocks, n)
    if not math.isfinite(best):
        return None, math.nan
    if not tie_break:
        return evaluate_hetero_cut(pr, order, counts, sizes), math.nan
    tol = best * (1 + MEMORY_REL_TOL) + 1e-15
    neg = {g: neg_headroom(pr.groups[g], s.mem[g]) for g in set(groups)}
    masked: dict[tuple[int, float], np.ndarray] = {}  # stages of one group and send share one matrix
    for g, x in zip(groups, sends, strict=True):
        if (g, x) not in masked:
            masked[g, x] = np.where(s.matrix(g, x) <= tol, neg[g], np.inf)
    scores = [masked[g, x] for g, x in zip(groups, sends, strict=True)]
    neg_head, tied = argmin_chain(scores, n)
    if math.isfinite(neg_head):
        sizes = tied
    return evaluate_hetero_cut(pr, order, counts, sizes), -neg_head


def _infeasible_reason(pr: HeteroProblem) -> str:
    n = pr.layers
    usable = [g for g in pr.groups if g.max_stages > 0]
    if not usable:
        return f"no group hosts a TP-{pr.tp} stage (TP {pr.tp} exceeds every node's GPUs)"
    if pr.pp is not None and pr.pp > min(n, sum(g.max_stages for g in usable)):
        return f"{pr.pp} stages exceed the stage slots of the cluster at TP {pr.tp}"
    # a layer that alone exceeds the limit of every kind fits nowhere
    over = np.min([np.diag(memory_matrix(g, n), 1) - g.memory_limit for g in usable], axis=0)
    worst = int(np.argmax(over))
    if over[worst] > 0:
        return f"decoder layer {worst} alone exceeds the per-GPU memory limit of every GPU kind at TP {pr.tp}"
    return f"every placement of TP-{pr.tp} stages overshoots some stage's memory limit"


def _solve(pr: HeteroProblem, by_pp: bool) -> tuple[_Search, float]:
    t0 = time.perf_counter()
    s = _Search(pr, by_pp)
    s.run()
    return s, t0


def _solution(pr: HeteroProblem, s: _Search, key: int, t0: float, final: bool) -> HeteroSolution:
    hit = s.best.get(key)
    if hit is None:
        return HeteroSolution(
            status="infeasible",
            tp=pr.tp,
            groups=len(pr.groups),
            explored=s.steps,
            wall_s=time.perf_counter() - t0,
            reason=_infeasible_reason(pr),
        )
    _, order, counts = hit
    cut, head = _best_cut(pr, s, order, counts, tie_break=final)
    assert cut is not None  # the search only keeps placements with a fitting cut
    return HeteroSolution(
        status="optimal",
        tp=pr.tp,
        groups=len(pr.groups),
        cut=cut,
        baselines=engine_cuts(pr, order, counts) if final else {},
        headroom=head,
        explored=s.steps,
        wall_s=time.perf_counter() - t0,
    )


def solve_hetero(pr: HeteroProblem, *, final: bool = True) -> HeteroSolution:
    """The placement and cut with the smallest bottleneck (fewest stages among ties), exactly.

    Args:
        pr: the instance.
        final: also break ties toward balanced KV headroom and cost the engines' even cuts on the
            same placement (``baselines``); without it (scoring inside a search) the cut is *an*
            optimal one, ``headroom`` is NaN and ``baselines`` empty.

    Never raises for an infeasible instance: the answer's status says so, with a reason.
    """
    s, t0 = _solve(pr, by_pp=False)
    return _solution(pr, s, 0, t0, final)


def solve_hetero_by_pp(pr: HeteroProblem, *, final: bool = True) -> dict[int, HeteroSolution]:
    """The best placement and cut for every number of stages that fits (one search for all), for a
    search that scores each PP with its own schedule (cycle = max(M, PP) × bottleneck); ``final``
    as for :func:`solve_hetero`."""
    s, t0 = _solve(pr, by_pp=True)
    return {p: _solution(pr, s, p, t0, final) for p in sorted(s.best)}


def solve_placement(
    pr: HeteroProblem, order: tuple[int, ...], counts: tuple[int, ...], *, final: bool = True
) -> HeteroCut | None:
    """The optimal cut of one placement (groups ``order`` hosting ``counts`` stages), ties broken
    toward balanced KV headroom when ``final``; None when no cut of it fits.

    Raises:
        PpplanError: an invalid placement.
    """
    placement(pr, order, counts)
    s = _Search(pr, by_pp=False)
    return _best_cut(pr, s, tuple(order), tuple(counts), tie_break=final)[0]

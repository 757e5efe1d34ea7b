"""Branch and bound over degrees: optimistic bounds, the ranking, pruning and the Pareto front.

Every layout first gets an optimistic score from a lower bound on its slowest stage (no cut
solved); the batch of each degrees is chosen on those scores (:mod:`partitioner.batch`). Exact
cuts are then solved in order of optimistic score, until no remaining degrees can reach the
runner-up list. The Pareto front is computed over every TP × PP and batch size, lazily exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ppplan.partitioner.batch import BatchSearch, Degrees3
from ppplan.partitioner.costs import Costs, Evaluation
from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.space import Layout

__all__ = [
    "RUNNER_UPS",
    "Search",
    "branch_and_bound",
    "merge_fronts",
    "optimistic",
    "pareto",
    "pareto_families",
    "rank_key",
]


RUNNER_UPS = 5
REFINED = 3
"""Leading choices whose batch is refined between the grid points"""

RankKey = tuple[float, ...]
_PRIMARY = 3
"""Leading entries of a rank key that are the objective (the rest break ties)"""
TIE_EVALUATIONS = 2 * (RUNNER_UPS + 1)
"""Exact choices after which candidates tied with the runner-up threshold are no longer solved"""


def lower_bound(costs: Costs, lay: Layout) -> float:
    """A lower bound on the slowest stage's busy seconds per micro-batch over every cut of ``lay``:
    the mean stage, the longest layer, the first layer with its send."""
    tv = costs.layer_times(lay.tp, lay.micro_batch_size)
    total_send, first_send = costs.sends_total(lay)
    return max((tv.total + total_send) / lay.pp, tv.longest, tv.first + first_send)


def optimistic(costs: Costs, lay: Layout) -> Evaluation:
    """``lay`` scored with a lower bound on its slowest stage; infeasible (with a reason) when it
    cannot fit in memory whatever the cut."""
    if not costs.fits(lay.tp, lay.pp, lay.sequences):
        return Evaluation(layout=lay, reason="does not fit in memory at any cut (total / stages exceeds the limit)")
    return costs.scored(lay, lower_bound(costs, lay))


def _violation(req: PlanRequest, e: Evaluation) -> float:
    """How far ``e`` misses the SLOs (0 when met): the worst ratio of predicted to allowed, minus 1
    (TTFT is bounded at its 90th percentile under load; a rate beyond capacity counts as a miss)."""
    worst = 0.0
    if req.max_tpot_ms is not None:
        worst = max(worst, e.tpot * 1e3 / req.max_tpot_ms - 1)
    if req.max_ttft_ms is not None:
        worst = max(worst, e.ttft_p90 * 1e3 / req.max_ttft_ms - 1)
    if req.rate is not None and e.capacity > 0:
        worst = max(worst, req.rate / (e.capacity * e.layout.replicas) - 1)
    return min(worst, 1e12)


def _bucket(x: float) -> int:
    """Throughput per GPU in 0.5 % steps: within one step, the tie-breaks decide."""
    return math.floor(math.log(x) / math.log(1.005)) if x > 0 else -(10**9)


def rank_key(req: PlanRequest, e: Evaluation) -> RankKey:
    """Sort key, larger is better: SLO met first; among misses, the closest; then the objective."""
    obj = req.objective
    miss = 0.0 if e.slo_met else -_violation(req, e)
    if obj == "throughput":
        return (e.slo_met, miss, _bucket(e.per_gpu), e.throughput, -e.tpot, -e.gpus)
    if obj == "latency":
        return (e.slo_met, miss, -e.tpot, -e.ttft_p90, e.per_gpu, -e.gpus)
    return (e.slo_met, miss, -e.gpus, _bucket(e.per_gpu), -e.tpot, e.throughput)


@dataclass(frozen=True, slots=True, kw_only=True)
class Search:
    """What branch and bound found."""

    evaluations: list[Evaluation]
    """exact, feasible evaluations (one per degrees, at its chosen batch), best first"""
    infeasible: list[Evaluation]
    """layouts that do not fit: optimistic rejections first (in search order), then exact ones"""


def branch_and_bound(
    costs: Costs, degrees: list[Degrees3], batches: BatchSearch, floor: RankKey | None = None
) -> Search:
    """The exact batch choice of the promising degrees, ranked best first.

    Degrees are visited in order of their optimistic score; once RUNNER_UPS + 1 exact choices are
    known, a degrees whose optimistic score is below the last of them cannot enter the list (an
    exact cut is never better than its optimistic bound), nor can any after it. ``floor`` (the
    RUNNER_UPS + 1-th key of families searched before) stops the search the same way once one exact
    choice is known (a family always reports its best).
    """
    req = costs.req
    cands: list[tuple[Degrees3, int, Evaluation]] = []
    infeasible: list[Evaluation] = []
    for d in degrees:
        b, opt = batches.optimistic_choice(d)
        if opt.feasible:
            cands.append((d, b, opt))
        else:
            infeasible.append(opt)
    cands.sort(key=lambda c: rank_key(req, c[2]), reverse=True)
    evals: list[Evaluation] = []
    keys: list[RankKey] = []
    for d, b, opt in cands:
        if floor is not None and evals and rank_key(req, opt) < floor:
            break
        if len(keys) > RUNNER_UPS:
            threshold = sorted(keys, reverse=True)[RUNNER_UPS]
            key = rank_key(req, opt)
            if key < threshold:
                break
            # ties on the objective (same SLO standing, per-GPU throughput within 0.5 %) are settled
            # by the tie-breaks among the first TIE_EVALUATIONS exact choices only
            if key[:_PRIMARY] == threshold[:_PRIMARY] and len(keys) >= TIE_EVALUATIONS:
                continue
        e = batches.exact_choice(d, b)
        if not e.feasible:
            infeasible.append(e)
            continue
        evals.append(e)
        keys.append(rank_key(req, e))
    evals.sort(key=lambda e: rank_key(req, e), reverse=True)
    # the leaders' batches between the grid points (the others keep their grid batch)
    evals[:REFINED] = [batches.refine(e) for e in evals[:REFINED]]
    evals.sort(key=lambda e: rank_key(req, e), reverse=True)
    return Search(evaluations=evals, infeasible=infeasible)


_Key = tuple[int, ...]
"""(family, TP, PP, replicas, micro-batch size or -sequences)"""


@dataclass(frozen=True, slots=True)
class _Point:
    """A Pareto candidate: (TPOT, throughput per GPU), exact or an optimistic bound."""

    tpot: float
    per_gpu: float
    gpus: int
    key: _Key
    exact: Evaluation | None


def _point(costs: Costs, e: Evaluation, key: _Key) -> _Point:
    """The saturated (closed-loop) point of an exact evaluation: what the batch sustains."""
    if costs.req.rate is not None:
        e = costs.scored(e.layout, e.bottleneck, e.sizes, exact=True, closed_loop=True)
    return _Point(e.tpot, e.per_gpu, e.gpus, key, e)


def _front(points: list[_Point]) -> list[_Point]:
    """The (TPOT, throughput per GPU) non-dominated points, by increasing TPOT."""
    pts = sorted(points, key=lambda p: (p.tpot, -p.per_gpu, p.gpus))
    out: list[_Point] = []
    best = -1.0
    for p in pts:
        if p.per_gpu > best * (1 + 1e-9):
            out.append(p)
            best = p.per_gpu
    return out


def _ladder(costs: Costs, batches: BatchSearch, d: Degrees3, family: int = 0) -> list[_Point]:
    """Optimistic points of ``d`` over its batch ladder, straight from the lower bound on the slowest
    stage (TPOT = cycle, throughput = sequences / cycle)."""
    out = []
    for b in batches.ladder(d):
        lay = batches.layout(d, b)
        cycle = max(lay.micro_batches, lay.pp) * lower_bound(costs, lay)
        out.append(_Point(cycle, lay.replicas * lay.sequences / cycle / lay.gpus, lay.gpus, (family, *d, b), None))
    return out


def pareto(costs: Costs, degrees: list[Degrees3], batches: BatchSearch, chosen: list[Evaluation]) -> list[Evaluation]:
    """The exact Pareto front of output tokens/s per GPU against TPOT over every TP × PP (at its
    fewest replicas: per-GPU figures do not depend on them) and batch size, with ``chosen`` in it:
    what each batch sustains, in a closed loop (with a request rate too: the plan's own figures are
    then at that rate, its point on the front at its capacity).

    Optimistic points stand in for exact ones until they reach the front; then they are scored at a
    real cut (the cut already solved for their degrees when it fits, else their own optimal cut) and
    the front recomputed, until every point on it is a real cut's."""
    return pareto_families([(costs, degrees, batches, chosen)])[0]


Family = tuple[Costs, list[Degrees3], BatchSearch, list[Evaluation]]
"""(costs, degrees, batch search, chosen evaluations) of one family of layouts"""


def _pool(i: int, family: Family) -> dict[_Key, _Point]:
    """Family ``i``'s candidate points: its optimistic ladders (every TP × PP at its fewest replicas:
    per-GPU figures do not depend on them) and its exact evaluations."""
    costs, degrees, batches, chosen = family
    fewest: dict[tuple[int, int], Degrees3] = {}
    for d in degrees:
        if (d[0], d[1]) not in fewest or d[2] < fewest[(d[0], d[1])][2]:
            fewest[(d[0], d[1])] = d
    pool: dict[_Key, _Point] = {}
    if batches.mode != "pinned":
        for d in fewest.values():
            pool.update((p.key, p) for p in _ladder(costs, batches, d, i))
    for e in [*batches.exact_evaluations, *chosen]:
        if e.feasible:
            key = (i, *e.layout.degrees, -e.layout.sequences)
            pool[key] = _point(costs, e, key)
    return pool


def pareto_families(families: list[Family]) -> list[list[Evaluation]]:
    """:func:`pareto` over several families at once (each with its own costs): one front, returned as
    each family's points on it. Only points that reach the common front are scored exactly."""
    pool: dict[_Key, _Point] = {}
    for i, fam in enumerate(families):
        pool.update(_pool(i, fam))
    while True:
        front = _front(list(pool.values()))
        todo = [p.key for p in front if p.exact is None]
        if not todo:
            out: list[list[Evaluation]] = [[] for _ in families]
            for p in front:
                if p.exact is not None:
                    out[p.key[0]].append(p.exact)
            return out
        for k in todo:
            costs, _, batches, _ = families[k[0]]
            e = batches.at_known_cut((k[1], k[2], k[3]), k[4])
            if e.feasible:
                pool[k] = _point(costs, e, k)
            else:
                del pool[k]


def merge_fronts(fronts: list[list[Evaluation]]) -> list[Evaluation]:
    """One Pareto front of several families' fronts (each already exact)."""
    pts = [_Point(e.tpot, e.per_gpu, e.gpus, (i, 0, 0, 0, 0), e) for i, f in enumerate(fronts) for e in f]
    return [p.exact for p in _front(pts) if p.exact is not None]

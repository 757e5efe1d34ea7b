"""Branch and bound over layouts: optimistic bounds, the ranking, pruning and the Pareto front.

Every layout first gets an optimistic score from a lower bound on its slowest stage (no cut
solved). Exact cuts are then solved in order of optimistic score; a layout is skipped when its
optimistic score cannot reach the runner-up list and its optimistic point is dominated by an exact
(TPOT, throughput per GPU) point already found.
"""

from __future__ import annotations

from dataclasses import dataclass

from ppplan.partitioner.costs import Costs, Evaluation
from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.space import Layout

__all__ = ["RUNNER_UPS", "Search", "branch_and_bound", "optimistic", "pareto", "rank_key"]

RUNNER_UPS = 5

RankKey = tuple[float, ...]


def optimistic(costs: Costs, lay: Layout) -> Evaluation:
    """``lay`` scored with a lower bound on its slowest stage; infeasible (with a reason) when it
    cannot fit in memory whatever the cut."""
    v = costs.vectors(lay)
    limit = costs.setup.limit_bytes
    if limit <= 0 or v.memory.total / lay.pp > limit or v.memory.largest_need > limit:
        return Evaluation(layout=lay, reason="does not fit in memory at any cut (total / stages exceeds the limit)")
    first_send = v.sends[0] if v.sends else 0.0
    tv = v.times
    lb = max((tv.total + sum(v.sends)) / lay.pp, tv.longest, float(tv.time[0]) + first_send)
    return costs.scored(lay, lb)


def _violation(req: PlanRequest, e: Evaluation) -> float:
    """How far ``e`` misses the SLOs (0 when met): the worst ratio of predicted to allowed, minus 1."""
    worst = 0.0
    if req.max_tpot_ms is not None:
        worst = max(worst, e.tpot * 1e3 / req.max_tpot_ms - 1)
    if req.max_ttft_ms is not None:
        worst = max(worst, e.ttft * 1e3 / req.max_ttft_ms - 1)
    return worst


def rank_key(req: PlanRequest, e: Evaluation) -> RankKey:
    """Sort key, larger is better: SLO met first; among misses, the closest; then the objective."""
    obj = req.objective
    miss = 0.0 if e.slo_met else -_violation(req, e)
    if obj == "throughput":
        return (e.slo_met, miss, e.throughput, -e.tpot, -e.gpus)
    if obj == "latency":
        return (e.slo_met, miss, -e.tpot, -e.ttft, e.throughput)
    return (e.slo_met, miss, -e.gpus, e.throughput, -e.tpot)


@dataclass(frozen=True, slots=True, kw_only=True)
class Search:
    """What branch and bound found."""

    evaluations: list[Evaluation]
    """exact, feasible evaluations, best first"""
    infeasible: list[Evaluation]
    """layouts that do not fit: optimistic rejections first (in search order), then exact ones"""


def _dominated(front: list[tuple[float, float]], tpot: float, per_gpu: float) -> bool:
    return any(f_tpot <= tpot and f_gpu >= per_gpu for f_tpot, f_gpu in front)


class _Incumbents:
    """The best exact key per degrees and the exact (TPOT, throughput per GPU) Pareto points."""

    def __init__(self, req: PlanRequest) -> None:
        self.req = req
        self.best_by_degrees: dict[tuple[int, int, int], RankKey] = {}
        self.front: list[tuple[float, float]] = []

    def prunes(self, opt: Evaluation) -> bool:
        """True when the optimistic ``opt`` can neither reach the runner-ups nor the front."""
        if len(self.best_by_degrees) <= RUNNER_UPS:
            return False
        threshold = sorted(self.best_by_degrees.values(), reverse=True)[RUNNER_UPS]
        return rank_key(self.req, opt) < threshold and _dominated(self.front, opt.tpot, opt.throughput / opt.gpus)

    def add(self, e: Evaluation) -> None:
        k = rank_key(self.req, e)
        deg = e.layout.degrees
        if deg not in self.best_by_degrees or k > self.best_by_degrees[deg]:
            self.best_by_degrees[deg] = k
        tpg = e.throughput / e.gpus
        if not _dominated(self.front, e.tpot, tpg):
            self.front = [(t, g) for t, g in self.front if not (e.tpot <= t and tpg >= g)] + [(e.tpot, tpg)]


def branch_and_bound(costs: Costs, layouts: list[Layout]) -> Search:
    """Exact cuts of the promising layouts, ranked best first (see module doc)."""
    req = costs.req
    cands: list[Evaluation] = []
    infeasible: list[Evaluation] = []
    for lay in layouts:
        opt = optimistic(costs, lay)
        (cands if opt.feasible else infeasible).append(opt)
    cands.sort(key=lambda e: rank_key(req, e), reverse=True)
    evals: list[Evaluation] = []
    inc = _Incumbents(req)
    for opt in cands:
        if inc.prunes(opt):
            continue
        e = costs.evaluate(opt.layout)
        if not e.feasible:
            infeasible.append(e)
            continue
        evals.append(e)
        inc.add(e)
    evals.sort(key=lambda e: rank_key(req, e), reverse=True)
    return Search(evaluations=evals, infeasible=infeasible)


def pareto(evals: list[Evaluation]) -> list[Evaluation]:
    """The (TPOT, throughput per GPU) non-dominated evaluations, by increasing TPOT."""
    pts = sorted(evals, key=lambda e: (e.tpot, -e.throughput / e.gpus))
    out: list[Evaluation] = []
    best_tpg = -1.0
    for e in pts:
        tpg = e.throughput / e.gpus
        if tpg > best_tpg * (1 + 1e-9):
            out.append(e)
            best_tpg = tpg
    return out

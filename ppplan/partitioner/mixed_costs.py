"""The costs of one pipeline over a mixed cluster, shaped for the outer search's batch decision.

:class:`MixedCosts` is a :class:`~partitioner.costs.Costs` whose layouts are one pipeline (TP × PP,
one replica) placed on the cluster's GPU groups: :mod:`partitioner.batch` and
:mod:`partitioner.bounds` run on it unchanged (the same batch semantics, the same optimistic
bounds and Pareto front). What differs from one GPU kind:

* each kind has its own :class:`Costs` (a :class:`Setup` with that GPU, its node size and memory
  limit = utilisation × its HBM − reserve); the bytes per layer are the model's, the same on
  every kind, the times are the kind's;
* the exact cut of a layout is :func:`partitioner.hetero.solve_hetero` with PP pinned (memory at
  S = b × PP sequences, times at micro-batches of b, sends of ``act_bytes_per_token × busy
  tokens``): the placement (stages per group, group order) and the cut together;
* the optimistic test and bound relax the kinds: memory against the PP largest stage limits, time
  against the fastest kind layer by layer and the fastest link;
* a replica's step cost (TTFT, TPOT under a rate) is its bottleneck stage's kind's
  (:meth:`Costs.replica_cost`), the fastest kind's for optimistic scores.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ppplan.core.profile import Profile
from ppplan.partitioner.cluster import Cluster
from ppplan.partitioner.costs import Costs, Evaluation, LayerTimes
from ppplan.partitioner.hetero import (
    HeteroProblem,
    KindVectors,
    cluster_problem,
    evaluate_hetero_cut,
    solve_hetero,
    solve_placement,
)
from ppplan.partitioner.hetero_problem import HeteroCut
from ppplan.partitioner.load import ReplicaCost
from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.space import GIB, Layout, Setup

__all__ = ["MixedCosts", "kind_setup"]


def kind_setup(base: Setup, req: PlanRequest, cluster: Cluster, group: int) -> Setup:
    """``base`` (the request's setup) for the GPUs of ``cluster.groups[group]``: its kind, node size
    and usable bytes (utilisation × its HBM); the cluster's GPU and node counts."""
    g = cluster.groups[group]
    return replace(
        base,
        gpu=g.gpu,
        count=cluster.count,
        nodes=cluster.nodes,
        gpus_per_node=g.gpus_per_node,
        usable_bytes=req.gpu_memory_utilization * g.gpu.hbm_bytes,
    )


class MixedCosts(Costs):
    """Costs of one-pipeline layouts on ``cluster`` (see the module docstring).

    ``kinds`` holds one :class:`Costs` per GPU kind (catalog name); ``self`` is the first group's
    setup for what does not depend on the kind (workload, bytes, the scoring formulas).
    """

    def __init__(self, req: PlanRequest, profile: Profile, cluster: Cluster) -> None:
        base = Setup.of(req, profile)
        super().__init__(req, profile, kind_setup(base, req, cluster, 0))
        self.cluster = cluster
        self.kinds: dict[str, Costs] = {}
        for a, g in enumerate(cluster.groups):
            if g.gpu.name not in self.kinds:
                self.kinds[g.gpu.name] = Costs(req, profile, kind_setup(base, req, cluster, a))
        self._min_times: dict[tuple[int, int], LayerTimes] = {}
        self._problems: dict[tuple[int, int, int, int, float], HeteroProblem] = {}
        self._placements: dict[tuple[int, int, int], tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._kind_of: dict[Layout, str] = {}
        self.cuts: dict[Layout, HeteroCut] = {}
        """the cut each exactly scored layout was scored at"""
        max_bw = max([g.link_bw for g in cluster.groups] + [cluster.inter_bw, *self._cross_bws()])
        self._fastest_link_s_per_byte = 1.0 / max_bw
        links = self.cm.links
        self._min_latency = min(links.p2p_intra_latency_s, links.p2p_inter_latency_s)

    def _cross_bws(self) -> list[float]:
        k = len(self.cluster.groups)
        return [self.cluster.cross_bw(a, b) for a in range(k) for b in range(k)]

    # ---- per kind -------------------------------------------------------------------------------
    def limit_of(self, gpu: str) -> float:
        """Bytes per GPU a stage on ``gpu`` may hold: utilisation × HBM − reserve."""
        return self.kinds[gpu].setup.limit_bytes

    def slots(self, tp: int) -> int:
        """TP-``tp`` stages the cluster can host (TP groups never span nodes or kinds)."""
        return sum(g.stages(tp) for g in self.cluster.groups)

    def slot_limits(self, tp: int) -> list[float]:
        """Memory limit of every TP-``tp`` stage slot of the cluster, largest first (bytes)."""
        lims = [self.limit_of(g.gpu.name) for g in self.cluster.groups for _ in range(g.stages(tp))]
        return sorted(lims, reverse=True)

    def fastest(self, tp: int, batch: int) -> str:
        """The kind with the least busy time per micro-batch over the whole model at TP ``tp``."""
        return min(self.kinds, key=lambda k: self.kinds[k].layer_times(tp, batch).total)

    # ---- optimistic: every kind relaxed to the best of them --------------------------------------
    def layer_times(self, tp: int, batch: int) -> LayerTimes:
        """Per decoder layer, the fastest kind's busy seconds (a lower bound for any placement)."""
        key = (tp, batch)
        hit = self._min_times.get(key)
        if hit is None:
            tv = np.min([c.layer_times(tp, batch).time for c in self.kinds.values()], axis=0)
            hit = LayerTimes(time=tv, total=float(tv.sum()), longest=float(tv.max()), first=float(tv[0]))
            self._min_times[key] = hit
        return hit

    def sends_total(self, lay: Layout) -> tuple[float, float]:
        """Every boundary over the fastest link of the cluster: (sum, first) seconds, a lower bound."""
        if lay.pp == 1:
            return 0.0, 0.0
        nbytes = float(self.cm.act_bpt[0]) * self.busy_tokens(lay)
        one = nbytes * self._fastest_link_s_per_byte + self._min_latency
        return (lay.pp - 1) * one, one

    def fits(self, tp: int, pp: int, sequences: int) -> bool:
        """Whether some placement of ``pp`` stages may fit: the model's bytes within the ``pp``
        largest stage limits, its largest layer within the largest, and the layers within the
        ``pp`` largest stage capacities (limit / smallest layer)."""
        lims = self.slot_limits(tp)[:pp]
        if len(lims) < pp or pp < 1:
            return False
        mem = self.layer_memory(tp, pp, sequences)
        if mem.total > sum(lims) or mem.largest_need > lims[0]:
            return False
        smallest = float(mem.memory.min())
        return smallest <= 0 or sum(int(x // smallest) for x in lims) >= self.setup.layers

    def memory_bound(self, lay: Layout) -> float:
        """A lower bound on the slowest stage from memory and speed together: stage slots of kind k
        hold at most ⌊limit_k / smallest layer⌋ layers and take at least (layers × the kind's
        fastest layer) seconds; the smallest T at which the ``pp`` best slots hold every layer
        (``inf`` when they cannot). Sends are left out."""
        n, tp, pp = self.setup.layers, lay.tp, lay.pp
        smallest = float(self.layer_memory(tp, pp, lay.sequences).memory.min())
        kinds = []  # (slots, layer cap, fastest layer seconds)
        for name, c in self.kinds.items():
            count = sum(g.stages(tp) for g in self.cluster.groups if g.gpu.name == name)
            cap = n if smallest <= 0 else min(n, int(self.limit_of(name) // smallest))
            fast = float(c.layer_times(tp, lay.micro_batch_size).time.min())
            if count and cap:
                kinds.append((count, cap, fast))

        def held(t: float) -> int:
            per = sorted(((_layers_within(t, f, cap), cnt) for cnt, cap, f in kinds), reverse=True)
            total, left = 0, pp
            for v, cnt in per:
                take = min(cnt, left)
                total, left = total + take * v, left - take
            return total

        if held(math.inf) < n:
            return math.inf
        cands = sorted({j * f for _, cap, f in kinds for j in range(1, cap + 1)})
        lo, hi = 0, len(cands) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if held(cands[mid]) >= n:
                hi = mid
            else:
                lo = mid + 1
        return cands[lo] * (1 - 1e-12)

    def stage_room(self, tp: int, pp: int) -> float:
        """Bytes per TP rank the ``pp`` largest stage slots hold together (:meth:`Costs.max_sequences`'s room)."""
        return sum(self.slot_limits(tp)[:pp])

    def replica_cost(self, lay: Layout, bottleneck: float) -> ReplicaCost:
        """The step cost of the kind of ``lay``'s bottleneck stage (the fastest kind before a cut)."""
        kind = self._kind_of.get(lay) or self.fastest(lay.tp, lay.micro_batch_size)
        return self.kinds[kind].replica_cost(lay, bottleneck)

    # ---- exact: the hetero solver ---------------------------------------------------------------
    def hetero_problem(self, lay: Layout, tokens: float | None = None) -> HeteroProblem:
        """The placement instance of ``lay`` (PP pinned); sends of ``tokens`` tokens per boundary
        (default: the busy tokens of a micro-batch)."""
        busy = self.busy_tokens(lay) if tokens is None else tokens
        key = (lay.tp, lay.pp, lay.micro_batch_size, lay.sequences, busy)
        hit = self._problems.get(key)
        if hit is not None:
            return hit
        vecs = {}
        for name, c in self.kinds.items():
            t = c.layer_times(lay.tp, lay.micro_batch_size)
            m = c.layer_memory(lay.tp, lay.pp, lay.sequences)
            vecs[name] = KindVectors(
                time=tuple(t.time.tolist()),
                memory=tuple(m.memory.tolist()),
                memory_limit=max(self.limit_of(name), 1.0),
                peak=tuple(m.peak.tolist()),
                kv=tuple(m.kv.tolist()),
            )
        nbytes = float(self.cm.act_bpt[0]) * busy
        pr = cluster_problem(self.cluster, lay.tp, vecs, nbytes, links=self.cm.links, pp=lay.pp)
        self._problems[key] = pr
        return pr

    def score(self, lay: Layout, cut: HeteroCut) -> Evaluation:
        """``lay`` scored exactly at ``cut`` (remembered as its degrees' placement)."""
        self._placements[lay.degrees] = (cut.order, cut.counts)
        self.cuts[lay] = cut
        self._kind_of[lay] = cut.places[int(np.argmax(cut.stage_times))].gpu
        return self.scored(lay, cut.bottleneck, cut.sizes, exact=True)

    def evaluate(self, lay: Layout, *, final: bool = False) -> Evaluation:
        """The best placement and cut of ``lay`` (PP pinned), exactly; ``final`` adds the
        KV-headroom tie-break (:func:`solve_hetero`)."""
        self.evaluated += 1
        sol = solve_hetero(self.hetero_problem(lay), final=final)
        if sol.cut is None:
            return Evaluation(layout=lay, reason=sol.reason)
        return self.score(lay, sol.cut)

    def with_cut(self, lay: Layout, sizes: tuple[int, ...]) -> Evaluation | None:
        """``lay`` at ``sizes`` on the placement last solved for its degrees, else at that
        placement's optimal cut: a feasible point no better than the exact one (None when no
        placement is known or none of its cuts fits)."""
        known = self._placements.get(lay.degrees)
        if known is None or len(sizes) != lay.pp:
            return None
        at = self.at_placement(lay, known[0], known[1], sizes)
        if at is not None:
            return at
        # the placement's own optimal cut: one min-max chain, not the search over placements
        cut = solve_placement(self.hetero_problem(lay), known[0], known[1], final=False)
        return self.score(lay, cut) if cut is not None else None

    def at_placement(
        self, lay: Layout, order: tuple[int, ...], counts: tuple[int, ...], sizes: tuple[int, ...]
    ) -> Evaluation | None:
        """``lay`` scored at a given placement and cut (no DP); None when the cut does not fit."""
        cut = evaluate_hetero_cut(self.hetero_problem(lay), order, counts, sizes)
        return self.score(lay, cut) if cut.fits else None

    def shortfall_text(self, tp: int) -> str:
        """What one pipeline at TP ``tp`` needs against what the cluster's stage slots hold (GiB)."""
        mem = self.layer_memory(tp, 2, 1)
        lims = self.slot_limits(tp)
        return (
            f"TP {tp}: weights and one sequence's KV need {mem.total / GIB:.1f} GiB per TP rank, the "
            f"{len(lims)} stage slots hold {sum(lims) / GIB:.1f} GiB"
            + (
                f" (largest layer {mem.largest_need / GIB:.1f} GiB, largest slot {lims[0] / GIB:.1f} GiB)"
                if lims
                else ""
            )
        )


def _layers_within(seconds: float, fastest: float, cap: int) -> int:
    """Layers of at least ``fastest`` seconds each that fit in ``seconds`` (at most ``cap``)."""
    if fastest <= 0 or not math.isfinite(seconds):
        return cap
    return min(cap, int(seconds / fastest * (1 + 1e-9)))

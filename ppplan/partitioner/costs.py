"""What one layout costs: per-layer vectors, its partition problem and its scored evaluation.

The steady-state schedule follows DESIGN.md: with M micro-batches of b sequences in flight on PP
stages, one cycle lasts max(M, PP) × the slowest stage's busy time per micro-batch; every sequence
advances one token per cycle (TPOT ≈ cycle) and a replica's throughput is (its sequences) / cycle.
A stage's busy time per micro-batch is its decode step plus its share of prefill work: with
chunked prefill, each cycle prefills b / output_tokens of a prompt per micro-batch on average.

Under load (:mod:`partitioner.load`), a replica's engine step is linear in its work: the slowest
stage's fixed time, per decode sequence and per prefill token (:meth:`Costs.replica_cost`). A
replica sustains (its sequences) / (idle TTFT + output tokens × cycle) requests/s. TTFT and, with
a request rate, TPOT come from the queueing approximation at the request rate; with no rate, at the
rate a closed loop of the planned sequences runs at (each finished request replaced by a new one,
as a benchmark at fixed concurrency does: prefill queueing, no wait for a free sequence slot).
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace

import numpy as np

from ppplan.core.costmodel import CostModel
from ppplan.core.profile import Profile
from ppplan.partitioner.dp import solve_partition
from ppplan.partitioner.evaluation import Evaluation, LayerMemory, LayerTimes, StageVectors, workload_of
from ppplan.partitioner.load import ReplicaCost, closed_form, idle_ttft
from ppplan.partitioner.problem import PartitionProblem
from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.space import Layout, Setup, inter_node, layout_of

__all__ = ["Costs", "Evaluation", "LayerMemory", "LayerTimes", "StageVectors", "workload_of"]


_CLOSED_LOOP_SEATS = 4
"""A closed loop never waits for a seat: its queueing model gets this many times the planned seats."""


_VectorKey = tuple[int, int, int, int, int]


class Costs:
    """Cost vectors and evaluations of the layouts of one request, cached across layouts.

    ``evaluated`` counts the exact cuts solved (reported as ``configs_evaluated``).
    """

    def __init__(self, req: PlanRequest, profile: Profile, setup: Setup) -> None:
        self.req = req
        self.profile = profile
        self.setup = setup
        self.cm = CostModel(profile, setup.gpu, engine=req.engine)
        self.evaluated = 0
        self._dec_cache: dict[tuple[int, int], np.ndarray] = {}
        self._pre_cache: dict[int, np.ndarray] = {}
        self._weights_cache: dict[tuple[int, bool], np.ndarray] = {}
        self._times_cache: dict[tuple[int, int], LayerTimes] = {}
        self._memory_cache: dict[tuple[int, bool, int], LayerMemory] = {}
        self._inter_cache: dict[tuple[int, int, int], list[bool]] = {}
        self._vec_cache: dict[_VectorKey, StageVectors] = {}
        self._problem_cache: dict[_VectorKey, PartitionProblem] = {}
        self._sum_cache: dict[tuple[int, int], float] = {}
        self._send_cache: dict[tuple[float, bool], float] = {}
        self._flag_cache: dict[tuple[int, int, int], tuple[int, int, bool]] = {}
        self.workload = workload_of(req)

    # ---- per-unit vectors -------------------------------------------------------------------------
    def prefill(self, tp: int) -> np.ndarray:
        """Seconds per unit to prefill one prompt at TP ``tp``."""
        if tp not in self._pre_cache:
            self._pre_cache[tp] = self.cm.unit_times(tp, "prefill", self.setup.prompt_tokens, self.setup.prompt_tokens)
        return self._pre_cache[tp]

    def decode(self, tp: int, batch: int) -> np.ndarray:
        """Seconds per unit of one decode step of ``batch`` sequences at TP ``tp``."""
        key = (tp, batch)
        if key not in self._dec_cache:
            self._dec_cache[key] = self.cm.unit_times(tp, "decode", batch, self.setup.decode_context)
        return self._dec_cache[key]

    def weights(self, tp: int, pp: int) -> np.ndarray:
        """Weight bytes per GPU of each unit at TP ``tp`` on ``pp`` stages (shared: read-only)."""
        key = (tp, self.setup.tied_embeddings and pp == 1)
        if key not in self._weights_cache:
            w = self.cm.weight_bytes_per_gpu(tp).copy()
            if key[1]:  # the head shares the embedding's matrix on a single stage
                w[-1] = self.cm.replicated[-1]
            self._weights_cache[key] = w
        return self._weights_cache[key]

    @functools.cached_property
    def profile_label(self) -> str:
        """The profile's label (its id is a hash of the whole profile: computed once per search)."""
        return self.profile.label

    @functools.cached_property
    def profile_id(self) -> str:
        """The profile's content id (computed once per search)."""
        return self.profile.profile_id

    def kv_bytes(self, tp: int, sequences: int) -> np.ndarray:
        """KV-cache bytes per GPU of each unit for ``sequences`` per replica at ``tp`` GPUs per stage
        (``kv_tokens`` each)."""
        return self.cm.kv_bytes_per_gpu(tp, sequences, self.setup.kv_tokens)

    def kv_per_sequence(self, tp: int) -> np.ndarray:
        """KV-cache bytes per GPU of each unit for one more sequence (capacity)."""
        return self.cm.kv_bytes_per_sequence(tp, self.setup.kv_tokens)

    def workspace(self, tp: int, sequences: int) -> np.ndarray:
        """Transient bytes per GPU of each unit while it runs a prefill chunk."""
        return self.cm.workspace_bytes(tp, self.req.prefill_chunk_tokens, sequences)

    def make_layout(self, tp: int, pp: int, replicas: int, sequences: int) -> Layout:
        """The layout of ``sequences`` per replica on these degrees (a subclass adds its own degrees)."""
        return layout_of(tp, pp, replicas, sequences)

    def inter_node(self, lay: Layout) -> list[bool]:
        """For each stage boundary of ``lay``: does any replica's send cross nodes?"""
        key = lay.degrees
        if key not in self._inter_cache:
            self._inter_cache[key] = inter_node(self.setup, lay.tp, lay.pp, lay.replicas)
        return self._inter_cache[key]

    def layer_times(self, tp: int, batch: int) -> LayerTimes:
        """Busy seconds per decoder layer for micro-batches of ``batch`` sequences at TP ``tp``."""
        key = (tp, batch)
        hit = self._times_cache.get(key)
        if hit is not None:
            return hit
        busy = self.decode(tp, batch) + (batch / self.setup.output_tokens) * self.prefill(tp)
        tv = busy[1:-1].copy()
        tv[0] += busy[0]
        tv[-1] += busy[-1]
        out = LayerTimes(time=tv, total=float(tv.sum()), longest=float(tv.max()), first=float(tv[0]))
        self._times_cache[key] = out
        return out

    def layer_memory(self, tp: int, pp: int, sequences: int) -> LayerMemory:
        """Bytes per GPU per decoder layer at TP ``tp`` on ``pp`` stages with ``sequences`` per replica."""
        key = (tp, self.setup.tied_embeddings and pp == 1, sequences)
        hit = self._memory_cache.get(key)
        if hit is not None:
            return hit
        w = self.weights(tp, pp)
        kv = self.kv_bytes(tp, sequences)
        mem = (w + kv)[1:-1].copy()
        mem[0] += w[0]
        mem[-1] += w[-1]
        ws = self.workspace(tp, sequences)
        peak = ws[1:-1].copy()
        peak[0] = max(peak[0], ws[0])
        peak[-1] = max(peak[-1], ws[-1])
        out = LayerMemory(
            memory=mem, peak=peak, kv=kv[1:-1], total=float(mem.sum()), largest_need=float((mem + peak).max())
        )
        self._memory_cache[key] = out
        return out

    @staticmethod
    def _key(lay: Layout) -> _VectorKey:
        return (lay.tp, lay.pp, lay.replicas, lay.micro_batch_size, lay.sequences)

    def vectors(self, lay: Layout) -> StageVectors:
        """Per-decoder-layer vectors of ``lay`` (cached; the micro-batch count does not change them)."""
        key = self._key(lay)
        hit = self._vec_cache.get(key)
        if hit is not None:
            return hit
        tokens = self.busy_tokens(lay)
        out = StageVectors(
            times=self.layer_times(lay.tp, lay.micro_batch_size),
            memory=self.layer_memory(lay.tp, lay.pp, lay.sequences),
            sends=tuple(self.send(tokens, x) for x in self.inter_node(lay)),
        )
        self._vec_cache[key] = out
        return out

    def sends_total(self, lay: Layout) -> tuple[float, float]:
        """(sum of all stage boundaries' sends, the first boundary's send) per micro-batch of ``lay``,
        seconds (0, 0 with one stage)."""
        key = lay.degrees
        flags = self._flag_cache.get(key)
        if flags is None:
            inter = self.inter_node(lay)
            flags = self._flag_cache[key] = (sum(inter), len(inter) - sum(inter), bool(inter and inter[0]))
        if lay.pp == 1:
            return 0.0, 0.0
        tokens = self.busy_tokens(lay)
        n_inter, n_intra, first = flags
        a, b = self.send(tokens, True), self.send(tokens, False)
        return n_inter * a + n_intra * b, a if first else b

    def send(self, tokens: float, inter: bool) -> float:
        """Seconds of one stage boundary's send of ``tokens`` tokens (cached)."""
        key = (tokens, inter)
        hit = self._send_cache.get(key)
        if hit is None:
            hit = self._send_cache[key] = self.cm.send_time(tokens, inter)
        return hit

    def fits(self, tp: int, pp: int, sequences: int) -> bool:
        """Whether ``sequences`` per replica can fit in memory at TP ``tp`` on ``pp`` stages at any cut
        (the optimistic memory test: the mean stage and the largest layer)."""
        limit = self.setup.limit_bytes
        mem = self.layer_memory(tp, pp, sequences)
        return limit > 0 and mem.total / pp <= limit and mem.largest_need <= limit

    def stage_room(self, tp: int, pp: int) -> float:
        """Bytes per TP rank that ``pp`` stages at TP ``tp`` hold together (the mean-stage bound's room)."""
        return pp * self.setup.limit_bytes

    def max_sequences(self, tp: int, pp: int, cap: int) -> int:
        """Most sequences per replica (at most ``cap``) that pass :meth:`fits`; 0 when one does not.

        Memory is affine in the sequences (weights + sequences × KV per sequence), so the mean-stage
        bound gives the answer directly; the per-layer test only moves it down, by bisection."""
        if not self.fits(tp, pp, 1):
            return 0
        one = self.layer_memory(tp, pp, 1)
        two = self.layer_memory(tp, pp, 2)
        per_seq = two.total - one.total
        hi = cap if per_seq <= 0 else min(cap, max(1, int((self.stage_room(tp, pp) - one.total) / per_seq) + 1))
        if self.fits(tp, pp, hi):
            return hi
        lo = 1
        while lo < hi - 1:
            mid = (lo + hi) // 2
            if self.fits(tp, pp, mid):
                lo = mid
            else:
                hi = mid
        return lo

    def busy_tokens(self, lay: Layout) -> float:
        """Tokens a stage sends per micro-batch: the decode tokens plus their share of prompt tokens."""
        b = lay.micro_batch_size
        return b + b * self.setup.prompt_tokens / self.setup.output_tokens

    def problem(self, lay: Layout) -> PartitionProblem:
        """The stage-partition instance of ``lay`` (decoder layers into PP stages)."""
        key = self._key(lay)
        hit = self._problem_cache.get(key)
        if hit is not None:
            return hit
        v = self.vectors(lay)
        limit = self.setup.limit_bytes
        pr = PartitionProblem(
            time=tuple(v.times.time.tolist()),
            stages=lay.pp,
            memory=tuple(v.memory.memory.tolist()),
            memory_limit=limit if limit > 0 else 1.0,
            peak=tuple(v.memory.peak.tolist()),
            send_time=v.sends,
            kv_memory=tuple(v.memory.kv.tolist()),
        )
        self._problem_cache[key] = pr
        return pr

    def _decode_sum(self, tp: int, batch: int) -> float:
        key = (tp, batch)
        if key not in self._sum_cache:
            self._sum_cache[key] = float(self.decode(tp, batch).sum())
        return self._sum_cache[key]

    def replica_cost(self, lay: Layout, bottleneck: float) -> ReplicaCost:
        """The linear step cost of one replica of ``lay`` whose slowest stage takes ``bottleneck``
        seconds per micro-batch: the whole model's decode and prefill costs per stage, scaled by the
        cut's imbalance (slowest stage / mean stage)."""
        t, b, st = lay.tp, lay.micro_batch_size, self.setup
        mean_stage = (self.layer_times(t, b).total + self.sends_total(lay)[0]) / lay.pp
        k = max(1.0, bottleneck / mean_stage if mean_stage > 0 else 1.0) / lay.pp
        d1 = self._decode_sum(t, 1)
        hi = max(b, 2)
        slope = max(0.0, (self._decode_sum(t, hi) - d1) / (hi - 1))
        fixed = max(0.0, d1 - slope)
        inter = any(self.inter_node(lay))
        send0 = self.send(0, inter) if lay.pp > 1 else 0.0
        send_tok = (self.send(1024, inter) - send0) / 1024 if lay.pp > 1 else 0.0
        per_tok = float(self.prefill(t).sum()) / st.prompt_tokens
        return ReplicaCost(
            pp=lay.pp,
            micro_batches=lay.micro_batches,
            stage_fixed_s=k * fixed + send0,
            stage_per_seq_s=k * slope + send_tok,
            stage_per_prefill_token_s=k * per_tok + send_tok,
            token_budget=st.token_budget,
            max_seqs=lay.sequences,
        )

    # ---- scoring ----------------------------------------------------------------------------------
    def scored(
        self,
        lay: Layout,
        bottleneck: float,
        sizes: tuple[int, ...] | None = None,
        *,
        exact: bool = False,
        closed_loop: bool = False,
        load: bool = False,
    ) -> Evaluation:
        """``lay`` with the schedule a slowest stage of ``bottleneck`` seconds gives, and its latencies
        under load: from the queueing approximation when ``exact`` and the load decides (a rate or a
        TTFT SLO) or ``load`` asks for them, else lower bounds (the idle TTFT, the work-free cycle)
        for branch and bound. ``closed_loop`` ignores the request rate (the saturated figures of the
        Pareto front)."""
        cycle = max(lay.micro_batches, lay.pp) * bottleneck
        rc = self.replica_cost(lay, bottleneck)
        o = self.setup.output_tokens
        idle = idle_ttft(rc, self.setup.prompt_tokens)
        cap = lay.sequences / (idle + o * cycle)
        given = None if closed_loop else self.req.rate
        rate = cap if given is None else given / lay.replicas
        p50 = p90 = idle
        tpot = cycle if given is None else max(lay.micro_batches, lay.pp) * rc.stage_fixed_s
        stable = rate <= cap
        # bounds suffice for branch and bound unless the load decides: the queueing model at the
        # optimistic costs is still optimistic (latencies only grow with the stage times)
        req = self.req
        loaded = given is not None or req.max_ttft_ms is not None or (exact and load)
        # an optimistic point its bounds already rule out needs no queueing model
        ruled_out = not exact and (
            (req.max_tpot_ms is not None and tpot * 1e3 > req.max_tpot_ms)
            or (req.max_ttft_ms is not None and idle * 1e3 > req.max_ttft_ms)
        )
        if loaded and not ruled_out:
            # a closed loop at the planned concurrency (no rate given) never waits for a seat
            seats = rc if given is not None else replace(rc, max_seqs=_CLOSED_LOOP_SEATS * lay.sequences + 64)
            pred = closed_form(seats, self.workload, rate)
            p50, p90 = (pred.ttft_p50_s, pred.ttft_p90_s) if pred.stable else (math.inf, math.inf)
            stable = given is None or (pred.stable and rate <= cap)  # a closed loop cannot overload
            if given is not None:
                tpot = pred.tpot_s if stable else math.inf
        thr = lay.replicas * lay.sequences / cycle if given is None else min(rate, cap) * lay.replicas * o
        return Evaluation(
            layout=lay,
            bottleneck=bottleneck,
            cycle=cycle,
            throughput=thr,
            tpot=tpot,
            ttft=idle,
            ttft_p50=p50,
            ttft_p90=p90,
            rate=rate,
            capacity=cap,
            slo_met=self._meets(tpot, p90) and stable,
            sizes=sizes,
            loaded=loaded,
        )

    def _meets(self, tpot: float, ttft_p90: float) -> bool:
        req = self.req
        return (req.max_tpot_ms is None or tpot * 1e3 <= req.max_tpot_ms) and (
            req.max_ttft_ms is None or ttft_p90 * 1e3 <= req.max_ttft_ms
        )

    def with_cut(self, lay: Layout, sizes: tuple[int, ...]) -> Evaluation | None:
        """``lay`` scored (exactly) at the given cut, None when that cut does not fit: a feasible
        point whose slowest stage bounds the optimal cut's from above (no DP solved)."""
        if len(sizes) != lay.pp:
            return None
        v = self.vectors(lay)
        bounds = np.cumsum((0, *sizes))
        limit = self.setup.limit_bytes
        tt = np.add.reduceat(v.times.time, bounds[:-1])
        mem = np.add.reduceat(v.memory.memory, bounds[:-1])
        peak = np.maximum.reduceat(v.memory.peak, bounds[:-1])
        if np.any(mem + peak > limit * (1 + 1e-9)):
            return None
        bottleneck = float(np.max(tt + np.array((*v.sends, 0.0))))
        return self.scored(lay, bottleneck, sizes, exact=True)

    def evaluate(self, lay: Layout, *, final: bool = False) -> Evaluation:
        """Solve the cut of ``lay`` exactly; ``final`` adds the KV-headroom tie-break."""
        self.evaluated += 1
        res = solve_partition(self.problem(lay), tie_break=final, explain=final)
        if not res.optimal:
            return Evaluation(layout=lay, reason=res.reason)
        return self.scored(lay, res.bottleneck, res.sizes, exact=True, load=final)

    def with_load(self, e: Evaluation) -> Evaluation:
        """``e`` with its latencies under load (for the points a plan shows)."""
        if e.loaded or not e.feasible:
            return e
        return self.scored(e.layout, e.bottleneck, e.sizes, exact=True, load=True)

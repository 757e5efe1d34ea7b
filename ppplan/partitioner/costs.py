"""What one layout costs: per-layer vectors, its partition problem and its scored evaluation.

The steady-state schedule follows DESIGN.md: with M micro-batches of b sequences in flight on PP
stages, one cycle lasts max(M, PP) × the slowest stage's busy time per micro-batch; every sequence
advances one token per cycle (TPOT ≈ cycle) and a replica's throughput is (its sequences) / cycle.
A stage's busy time per micro-batch is its decode step plus its share of prefill work: with
chunked prefill, each cycle prefills b / output_tokens of a prompt per micro-batch on average.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ppplan.core.costmodel import CostModel
from ppplan.core.profile import Profile
from ppplan.partitioner.dp import solve_partition
from ppplan.partitioner.problem import PartitionProblem
from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.space import Layout, Setup, inter_node

__all__ = ["Costs", "Evaluation", "LayerMemory", "LayerTimes", "StageVectors"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerTimes:
    """Busy seconds per decoder layer and micro-batch (decode step + prefill share), embedding and
    head folded into the first and last layer (they always share those layers' stages)."""

    time: np.ndarray
    total: float
    """sum of ``time``"""
    longest: float
    """largest entry of ``time``"""


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerMemory:
    """Bytes per GPU per decoder layer, embedding and head folded in as for :class:`LayerTimes`."""

    memory: np.ndarray
    """weights and KV cache"""
    peak: np.ndarray
    """transient workspace"""
    kv: np.ndarray
    """KV cache (part of ``memory``)"""
    total: float
    """sum of ``memory``"""
    largest_need: float
    """largest ``memory + peak`` of one layer"""


@dataclass(frozen=True, slots=True, kw_only=True)
class StageVectors:
    """Everything the cut of one layout depends on (the arrays are shared: read-only)."""

    times: LayerTimes
    memory: LayerMemory
    sends: tuple[float, ...]
    """seconds of each stage boundary's activation send per micro-batch"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Evaluation:
    """A layout with its predicted schedule: optimistic (no cut yet) or exact (``sizes`` set)."""

    layout: Layout
    bottleneck: float = math.inf
    """slowest stage's busy time per micro-batch, seconds; ``inf`` when it does not fit"""
    cycle: float = math.inf
    """seconds per decode cycle: max(M, PP) × bottleneck"""
    throughput: float = 0.0
    """tokens per second over all replicas"""
    tpot: float = math.inf
    """seconds per output token"""
    ttft: float = math.inf
    """seconds to the first token on an idle replica"""
    slo_met: bool = False
    sizes: tuple[int, ...] | None = None
    """decoder layers per stage, once the cut is solved"""
    reason: str | None = None
    """why the layout does not fit"""

    @property
    def gpus(self) -> int:
        """GPUs the layout uses."""
        return self.layout.gpus

    @property
    def feasible(self) -> bool:
        """True when the layout fits in memory (at the optimistic or the exact cut)."""
        return math.isfinite(self.bottleneck)


_VectorKey = tuple[int, int, int, int, int]


class Costs:
    """Cost vectors and evaluations of the layouts of one request, cached across layouts.

    ``evaluated`` counts the exact cuts solved (reported as ``configs_evaluated``).
    """

    def __init__(self, req: PlanRequest, profile: Profile, setup: Setup) -> None:
        self.req = req
        self.profile = profile
        self.setup = setup
        self.cm = CostModel(profile, setup.gpu)
        self.evaluated = 0
        self._dec_cache: dict[tuple[int, int], np.ndarray] = {}
        self._pre_cache: dict[int, np.ndarray] = {}
        self._weights_cache: dict[tuple[int, bool], np.ndarray] = {}
        self._times_cache: dict[tuple[int, int], LayerTimes] = {}
        self._memory_cache: dict[tuple[int, bool, int], LayerMemory] = {}
        self._inter_cache: dict[tuple[int, int, int], list[bool]] = {}
        self._vec_cache: dict[_VectorKey, StageVectors] = {}
        self._problem_cache: dict[_VectorKey, PartitionProblem] = {}
        self._ttft_cache: dict[tuple[int, int, int], float] = {}

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
        out = LayerTimes(time=tv, total=float(tv.sum()), longest=float(tv.max()))
        self._times_cache[key] = out
        return out

    def layer_memory(self, tp: int, pp: int, sequences: int) -> LayerMemory:
        """Bytes per GPU per decoder layer at TP ``tp`` on ``pp`` stages with ``sequences`` per replica."""
        key = (tp, self.setup.tied_embeddings and pp == 1, sequences)
        hit = self._memory_cache.get(key)
        if hit is not None:
            return hit
        w = self.weights(tp, pp)
        kv = self.cm.kv_bytes_per_gpu(tp, sequences, self.setup.context)
        mem = (w + kv)[1:-1].copy()
        mem[0] += w[0]
        mem[-1] += w[-1]
        ws = self.cm.workspace_bytes(tp, self.req.prefill_chunk_tokens, sequences)
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
        send = {x: self.cm.send_time(tokens, x) for x in (False, True)}
        out = StageVectors(
            times=self.layer_times(lay.tp, lay.micro_batch_size),
            memory=self.layer_memory(lay.tp, lay.pp, lay.sequences),
            sends=tuple(send[x] for x in self.inter_node(lay)),
        )
        self._vec_cache[key] = out
        return out

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

    def ttft(self, lay: Layout) -> float:
        """Seconds to the first token: one prompt's prefill through every stage plus the sends."""
        key = lay.degrees
        if key not in self._ttft_cache:
            p_tok = self.setup.prompt_tokens
            sends = sum(self.cm.send_time(p_tok, x) for x in inter_node(self.setup, lay.tp, lay.pp, lay.replicas))
            self._ttft_cache[key] = float(self.prefill(lay.tp).sum()) + sends
        return self._ttft_cache[key]

    # ---- scoring ----------------------------------------------------------------------------------
    def scored(self, lay: Layout, bottleneck: float, sizes: tuple[int, ...] | None = None) -> Evaluation:
        """``lay`` with the schedule a slowest stage of ``bottleneck`` seconds gives."""
        cycle = max(lay.micro_batches, lay.pp) * bottleneck
        ttft = self.ttft(lay)
        req = self.req
        slo = (req.max_tpot_ms is None or cycle * 1e3 <= req.max_tpot_ms) and (
            req.max_ttft_ms is None or ttft * 1e3 <= req.max_ttft_ms
        )
        return Evaluation(
            layout=lay,
            bottleneck=bottleneck,
            cycle=cycle,
            throughput=lay.replicas * lay.sequences / cycle,
            tpot=cycle,
            ttft=ttft,
            slo_met=slo,
            sizes=sizes,
        )

    def evaluate(self, lay: Layout, *, final: bool = False) -> Evaluation:
        """Solve the cut of ``lay`` exactly; ``final`` adds the KV-headroom tie-break."""
        self.evaluated += 1
        res = solve_partition(self.problem(lay), tie_break=final, explain=final)
        if not res.optimal:
            return Evaluation(layout=lay, reason=res.reason)
        return self.scored(lay, res.bottleneck, res.sizes)

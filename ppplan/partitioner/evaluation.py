"""The values the outer search passes around: per-layer vectors of a layout and its scored
evaluation, and the request's workload distributions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.space import Layout
from ppplan.partitioner.workload import TokenDist, Workload

__all__ = ["Evaluation", "LayerMemory", "LayerTimes", "StageVectors", "workload_of"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerTimes:
    """Busy seconds per decoder layer and micro-batch (decode step + prefill share), embedding and
    head folded into the first and last layer (they always share those layers' stages)."""

    time: np.ndarray
    total: float
    """sum of ``time``"""
    longest: float
    """largest entry of ``time``"""
    first: float
    """the first entry of ``time`` (the embedding's layer)"""


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
    """seconds per output token (at the request rate when one is given, else with the batch full)"""
    ttft: float = math.inf
    """seconds to the first token on an idle replica"""
    ttft_p50: float = math.inf
    """median seconds to the first token at the load (see ``rate``)"""
    ttft_p90: float = math.inf
    """90th-percentile seconds to the first token at the load"""
    rate: float = 0.0
    """requests/s per replica the latencies are predicted at"""
    capacity: float = 0.0
    """requests/s per replica the layout sustains"""
    slo_met: bool = False
    sizes: tuple[int, ...] | None = None
    """decoder layers per stage, once the cut is solved"""
    loaded: bool = False
    """``ttft_p50``/``ttft_p90`` come from the load model (else they are the idle TTFT, a bound)"""
    reason: str | None = None
    """why the layout does not fit"""

    @property
    def gpus(self) -> int:
        """GPUs the layout uses."""
        return self.layout.gpus

    @property
    def per_gpu(self) -> float:
        """Output tokens/s per GPU."""
        return self.throughput / self.gpus

    @property
    def feasible(self) -> bool:
        """True when the layout fits in memory (at the optimistic or the exact cut)."""
        return math.isfinite(self.bottleneck)


def _dist(mean: float, sd: float | None, hist: tuple[tuple[int, float], ...] | None) -> TokenDist:
    if hist:
        return TokenDist.from_histogram(hist)
    return TokenDist(mean=float(mean), sd=float(sd or 0.0))


def workload_of(req: PlanRequest) -> Workload:
    """The request's prompt and output length distributions."""
    return Workload(
        prompt=_dist(req.prompt_tokens, req.prompt_tokens_sd, req.prompt_tokens_histogram),
        output=_dist(req.output_tokens, req.output_tokens_sd, req.output_tokens_histogram),
    )

"""The cost model: seconds and bytes per planning unit on one GPU kind at a TP degree (pure numpy).

Roofline per unit (DESIGN.md), with the details that decide stage balance:

    T = max(C, M) + ω · min(C, M) + tp_allreduces · AR(t) + overhead,
    C = F / (t · peak_flops · η_f),  M = B / (hbm_bw · η_b)

(ω, the calibrated share of the smaller term that does not overlap the larger, is 0 for the ideal
roofline and by default; CPUs and small kernels fit values near 0.5.)

* F (FLOPs): 2 · active matmul params · tokens + attention pairs · FLOPs per pair. Decode pairs
  are ``tokens · min(context, window)``; prefill pairs are causal, ``Σ_i min(i, window)``. The LM head
  computes logits for sampled tokens only (the last prompt token in prefill).
* B (bytes read): weights once per forward (the embedding only its tokens' rows); routed experts
  only the expected share touched by the batch, ``1 - (1 - k/E)^tokens`` of them; decode also
  reads the KV cache of every sequence.
* AR(t) = 2 (t-1)/t · bytes / link_bw + latency, for each all-reduce of ``hidden`` per token.
* Memory per GPU: weights / t (norms and biases whole on every rank; K/V projections and KV cache
  sharded over at most ``n_kv_heads`` ranks, MLA's latent cache not at all), KV cache for the
  sequences in flight, transient workspace of the largest unit, a runtime reserve.

Measured profiles: where the profile was measured on this GPU kind and a unit has points for the
phase, the time is the analytic time scaled by the measured/analytic ratio interpolated (inverse
distance in log tokens × log context) between the measured points: exact at every measured
point, the analytic shape in between and beyond, and the analytic TP scaling on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ppplan.core.dtypes import COMPUTE_DTYPE
from ppplan.core.gpus import GPUSpec
from ppplan.core.profile import Efficiency, Profile

__all__ = ["COST_MODEL_VERSION", "DEFAULT_EFFICIENCY", "CostModel", "LinkSettings", "causal_pairs"]

#: version of the formulas here and in the analytic profile; bump when a predicted number changes
COST_MODEL_VERSION = "roofline-2"

#: efficiency factors used when a profile carries no calibration for the GPU kind: prefill GEMMs
#: reach ~60% of the dense peak on Hopper, decode reaches ~80% of HBM bandwidth (vLLM/SGLang)
DEFAULT_EFFICIENCY = Efficiency(compute=0.6, memory=0.8, overhead_s=10e-6, source="default")


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkSettings:
    """Latencies of the collectives (seconds); bandwidths come from the GPU catalog."""

    allreduce_latency_s: float = 10e-6
    """fixed cost of one TP all-reduce inside a node"""
    p2p_intra_latency_s: float = 10e-6
    """fixed cost of a stage-to-stage send inside a node"""
    p2p_inter_latency_s: float = 25e-6
    """fixed cost of a stage-to-stage send across nodes"""


def causal_pairs(tokens: int, window: float) -> float:
    """(query, key) pairs of causal attention over ``tokens`` new tokens with a window (inf = none)."""
    if tokens <= window:
        return tokens * (tokens + 1) / 2
    return window * (window + 1) / 2 + (tokens - window) * window


class CostModel:
    """Times (seconds) and per-GPU bytes of every unit of ``profile`` on ``gpu``."""

    def __init__(self, profile: Profile, gpu: GPUSpec, links: LinkSettings | None = None) -> None:
        self.profile = profile
        self.gpu = gpu
        self.links = links or LinkSettings()
        self.efficiency = profile.calibration.get(gpu.name, DEFAULT_EFFICIENCY)
        self.measured = profile.kind == "measured" and profile.device == gpu.name
        us = profile.units
        f = lambda attr: np.array([float(getattr(u, attr)) for u in us])  # noqa: E731
        self.weight = f("weight_bytes")
        self.expert = f("expert_weight_bytes")
        self.replicated = f("replicated_bytes")
        self.kv_proj = f("kv_proj_bytes")
        self.lin_flops = f("linear_flops_per_token")
        self.kv_bpt = f("kv_bytes_per_token")
        self.pair_prefill = f("attn_flops_per_pair_prefill")
        self.pair_decode = f("attn_flops_per_pair_decode")
        self.act_bpt = f("act_bytes_per_token")
        self.ar_bpt = f("allreduce_bytes_per_token")
        self.n_ar = f("tp_allreduces")
        self.ws_bpt = f("workspace_bytes_per_token")
        self.window = np.array([float(u.window) if u.window else math.inf for u in us])
        self.kv_heads = np.array([max(1, u.num_kv_heads) for u in us], dtype=float)
        self.shardable = np.array([u.kv_tp_shardable for u in us])
        self.n_experts = f("num_experts")
        self.topk = f("experts_per_token")
        self.is_head = np.array([u.kind == "head" for u in us])
        self.is_embed = np.array([u.kind == "embed" for u in us])
        self.is_decoder = np.array([u.kind == "decoder" for u in us])
        dec_dtype = COMPUTE_DTYPE[profile.weight_dtype]
        self.peak = np.array([gpu.peak_flops(dec_dtype if u.kind == "decoder" else profile.act_dtype) for u in us])
        self._ratio_cache: dict[tuple[int, str, int, int], float] = {}

    # ---- memory -------------------------------------------------------------------------------
    def kv_shards(self, tp: int) -> np.ndarray:
        """Ranks each unit's KV cache is split over at TP degree ``tp`` (1 for MLA)."""
        return np.where(self.shardable, np.minimum(float(tp), self.kv_heads), 1.0)

    def weight_bytes_per_gpu(self, tp: int) -> np.ndarray:
        """Weight bytes each GPU of a TP group holds, per unit."""
        sharded = self.weight - self.replicated - self.kv_proj
        return sharded / tp + self.replicated + self.kv_proj / self.kv_shards(tp)

    def kv_bytes_per_gpu(self, tp: int, sequences: float, context: int) -> np.ndarray:
        """KV-cache bytes per GPU, per unit, for ``sequences`` of ``context`` tokens each."""
        return self.kv_bpt * np.minimum(float(context), self.window) * sequences / self.kv_shards(tp)

    def kv_bytes_per_sequence(self, tp: int, context: int) -> np.ndarray:
        """KV-cache bytes per GPU of one sequence of ``context`` tokens, per unit."""
        return self.kv_bytes_per_gpu(tp, 1.0, context)

    def workspace_bytes(self, tp: int, chunk_tokens: int, sequences: int) -> np.ndarray:
        """Transient bytes per GPU while a unit runs a prefill chunk (head: logits of the sequences)."""
        tokens = np.where(self.is_head, float(min(chunk_tokens, max(1, sequences))), float(chunk_tokens))
        return self.ws_bpt * tokens / tp

    # ---- time ---------------------------------------------------------------------------------
    def allreduce_time(self, tp: int, nbytes: float | np.ndarray) -> float | np.ndarray:
        """Seconds of one ring all-reduce of ``nbytes`` over ``tp`` GPUs inside a node."""
        if tp <= 1:
            return 0.0 * nbytes
        return 2 * (tp - 1) / tp * nbytes / self.gpu.nvlink_bw + self.links.allreduce_latency_s

    def send_time(self, tokens: float, inter_node: bool) -> float:
        """Seconds to send the boundary activations of ``tokens`` tokens to the next stage."""
        nbytes = float(self.act_bpt[0]) * tokens
        if inter_node:
            return nbytes / self.gpu.network_bw + self.links.p2p_inter_latency_s
        return nbytes / self.gpu.nvlink_bw + self.links.p2p_intra_latency_s

    def _analytic(self, tp: int, phase: str, tokens: int, context: int) -> np.ndarray:
        eff = self.efficiency
        n = float(tokens)
        if phase == "decode":
            pairs = n * np.minimum(float(context), self.window)
            flops = self.lin_flops * n + self.pair_decode * pairs
            touched = np.where(
                self.n_experts > 0, 1.0 - np.power(1.0 - self.topk / np.maximum(self.n_experts, 1.0), n), 1.0
            )
            weights = (self.weight - self.expert) + self.expert * touched
            kv = self.kv_bpt * pairs / self.kv_shards(tp)
            nbytes = weights / tp + kv
            comm_tokens = n
        else:
            pairs = np.array([causal_pairs(tokens, w) for w in self.window])
            lin = np.where(self.is_head, self.lin_flops * 1.0, self.lin_flops * n)
            flops = lin + self.pair_prefill * pairs
            touched = np.where(
                self.n_experts > 0, 1.0 - np.power(1.0 - self.topk / np.maximum(self.n_experts, 1.0), n), 1.0
            )
            weights = (self.weight - self.expert) + self.expert * touched
            nbytes = weights / tp + self.kv_bpt * np.minimum(n, self.window) / self.kv_shards(tp)
            comm_tokens = n
        # an embedding lookup reads only the rows of its tokens (hidden × act bytes each)
        nbytes = np.where(self.is_embed, np.minimum(self.weight / tp, n * self.act_bpt / 2), nbytes)
        compute = flops / (tp * self.peak * eff.compute)
        memory = nbytes / (self.gpu.hbm_bw * eff.memory)
        comm = self.n_ar * self.allreduce_time(tp, self.ar_bpt * comm_tokens)
        roof = np.maximum(compute, memory)
        if eff.overlap:
            roof = roof + eff.overlap * np.minimum(compute, memory)
        return roof + comm + self.unit_overhead

    @property
    def unit_overhead(self) -> np.ndarray:
        """Fixed seconds per forward of each unit (decoder layers vs embedding and head)."""
        eff = self.efficiency
        return np.where(
            self.is_head, eff.overhead_of("head"), np.where(self.is_embed, eff.overhead_of("embed"), eff.overhead_s)
        )

    def unit_times(self, tp: int, phase: Literal["prefill", "decode"], tokens: int, context: int) -> np.ndarray:
        """Seconds per unit for one forward.

        Args:
            tp: tensor-parallel degree.
            phase: 'prefill' (``tokens`` = prompt length of one sequence) or 'decode' (``tokens`` =
                sequences in the batch, one new token each).
            tokens: see ``phase``.
            context: decode: tokens already cached per sequence (ignored in prefill).
        """
        t = self._analytic(tp, phase, tokens, context)
        if self.measured:
            t = t * self._measured_ratio(phase, tokens, context)
        return t

    def _measured_ratio(self, phase: str, tokens: int, context: int) -> np.ndarray:
        ratios = np.ones(len(self.profile.units))
        for i, u in enumerate(self.profile.units):
            pts = [p for p in u.measured if p.phase == phase]
            if not pts:
                continue
            key = (i, phase, tokens, context if phase == "decode" else tokens)
            hit = self._ratio_cache.get(key)
            if hit is None:
                hit = self._interpolate_ratio(i, pts, phase, tokens, context)
                self._ratio_cache[key] = hit
            ratios[i] = hit
        return ratios

    def _interpolate_ratio(self, i: int, pts: list, phase: str, tokens: int, context: int) -> float:
        ctx_q = context if phase == "decode" else tokens
        ws, rs = [], []
        for p in pts:
            base = float(self._analytic(1, phase, p.tokens, p.context)[i])
            r = p.time_s / base
            d = math.hypot(
                math.log2(p.tokens) - math.log2(tokens), math.log2(max(p.context, 1)) - math.log2(max(ctx_q, 1))
            )
            if d < 1e-9:
                return r
            ws.append(1.0 / d**2)
            rs.append(math.log(r))
        return math.exp(sum(w * r for w, r in zip(ws, rs, strict=True)) / sum(ws))

    def describe(self) -> dict[str, object]:
        """Provenance of the numbers this model produces."""
        return {
            "cost_model": COST_MODEL_VERSION,
            "gpu": self.gpu.name,
            "time_source": "measured points (interpolated) with analytic TP scaling"
            if self.measured
            else "analytic roofline",
            "efficiency": self.efficiency.model_dump(),
        }

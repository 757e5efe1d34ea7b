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

Shape-aware kernel model (roofline-3, the default wherever measured kernel data covers the GPU kind
and the profile carries no calibration of its own): each unit is timed as the kernels an engine
runs for it (:mod:`ppplan.core.layer_kernels`), GEMM and attention efficiencies depending on their
shapes (:mod:`ppplan.core.kernels`) and collectives from measured size curves
(:mod:`ppplan.core.collectives`). Decode runs as CUDA-graph replay by default (engines capture it);
``cuda_graphs=False`` adds the eager launch floor to every kernel. A profile calibrated for the GPU
kind (``ppplan calibrate``), a GPU kind without kernel data (the CPU) and the calibration fit itself
use the roofline above.

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

from ppplan.core.collectives import Collectives, collectives_for
from ppplan.core.dtypes import COMPUTE_DTYPE
from ppplan.core.gpus import GPUSpec
from ppplan.core.kernels import KernelFit, kernel_fit_for, kernel_fit_from_dict
from ppplan.core.layer_kernels import KernelInputs, UnitShapes, unit_kernel_times
from ppplan.core.profile import Efficiency, Profile

__all__ = ["COST_MODEL_VERSION", "DEFAULT_EFFICIENCY", "CostModel", "LinkSettings", "causal_pairs"]

#: version of the formulas here and in the analytic profile; bump when a predicted number changes
COST_MODEL_VERSION = "roofline-3"

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


def profile_timing(profile: Profile) -> str:
    """How a measured profile timed its units: 'eager', 'cuda-graph' or 'unknown' (older files)."""
    return str(profile.provenance.get("timing") or "unknown")


class CostModel:
    """Times (seconds) and per-GPU bytes of every unit of ``profile`` on ``gpu``.

    Args:
        profile: the profile (analytic, measured or calibrated).
        gpu: the GPU kind.
        links: latencies of the roofline's collectives (GPU kinds without measured curves).
        engine: 'vllm', 'sglang' or 'trtllm' (whose measured kernels and custom all-reduce to use);
            None: vLLM's.
        cuda_graphs: decode replayed from CUDA graphs as engines do (default) or launched eagerly.
        roofline: force the (calibratable) roofline even where kernel data exists.
    """

    def __init__(
        self,
        profile: Profile,
        gpu: GPUSpec,
        links: LinkSettings | None = None,
        *,
        engine: str | None = None,
        cuda_graphs: bool = True,
        roofline: bool = False,
    ) -> None:
        self.profile = profile
        self.gpu = gpu
        self.links = links or LinkSettings()
        self.engine = engine
        self.cuda_graphs = cuda_graphs
        cal = profile.calibration.get(gpu.name)
        self.kernels: KernelFit | None = None
        if cal is not None and cal.kernels is not None and not roofline:
            # a kernel-table profile source (--kernel-db): coefficients fitted at plan time
            self.kernels = kernel_fit_from_dict(gpu.name, str(cal.kernels["engine"]), cal.kernels, cal.source)
        elif cal is None and not roofline:
            self.kernels = kernel_fit_for(gpu.name, engine)
        self.collectives: Collectives | None = (
            collectives_for(gpu.name, self.kernels.engine) if self.kernels is not None else None
        )
        summary = self.kernels.summary(cuda_graphs) if self.kernels is not None else None
        self.efficiency = cal if cal is not None else summary or DEFAULT_EFFICIENCY
        self.eager_profile_skipped = (
            profile.kind == "measured"
            and profile.device == gpu.name
            and self.kernels is not None
            and cuda_graphs
            and profile_timing(profile) == "eager"
        )
        self.measured = profile.kind == "measured" and profile.device == gpu.name and not self.eager_profile_skipped
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
        self._decode_tables: dict[tuple[int, int], np.ndarray] = {}
        self._send_cache: dict[float, float] = {}
        tp_measured = profile.provenance.get("tp")
        self._measured_tp = int(tp_measured) if isinstance(tp_measured, int | float) and tp_measured >= 1 else 1
        # identical units (all decoder layers of a dense model) are timed once
        feats = np.stack(
            [self.weight, self.expert, self.kv_bpt, self.pair_prefill, self.pair_decode, self.act_bpt, self.ar_bpt,
             self.n_ar, np.where(np.isinf(self.window), -1.0, self.window), self.kv_heads, self.shardable,
             self.n_experts, self.topk, self.is_head, self.is_embed, self.peak, self.kv_proj, self.lin_flops,
             np.array([float(u.params) for u in us])],
            axis=1,
        )  # fmt: skip
        _, self._rep, self._inv = np.unique(feats, axis=0, return_index=True, return_inverse=True)
        self._inv = self._inv.reshape(-1)
        self.shapes = UnitShapes.of(profile) if self.kernels is not None else None
        self._shapes_rep = self.shapes.take(self._rep) if self.shapes is not None else None
        self.has_attention = np.array([u.attention != "none" for u in us])
        self.gemm_dtype = dec_dtype

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
        """Seconds of one TP all-reduce of ``nbytes`` over ``tp`` GPUs inside a node (measured curve
        with the engine's custom all-reduce where the GPU kind has one, else ring formula + latency)."""
        if tp <= 1:
            return 0.0 * nbytes
        if self.collectives is not None:
            t: float | np.ndarray = self.collectives.allreduce_time(tp, nbytes, cuda_graphs=self.cuda_graphs)
            return t
        return 2 * (tp - 1) / tp * nbytes / self.gpu.nvlink_bw + self.links.allreduce_latency_s

    def send_time(self, tokens: float, inter_node: bool) -> float:
        """Seconds to send the boundary activations of ``tokens`` tokens to the next stage."""
        nbytes = float(self.act_bpt[0]) * tokens
        if inter_node:
            return nbytes / self.gpu.network_bw + self.links.p2p_inter_latency_s
        if self.collectives is not None:
            hit = self._send_cache.get(nbytes)
            if hit is None:  # the search asks for the same few sizes thousands of times
                hit = self._send_cache[nbytes] = float(self.collectives.p2p_time(nbytes))
            return hit
        return nbytes / self.gpu.nvlink_bw + self.links.p2p_intra_latency_s

    def _kernel_path(self, tp: int, phase: str, tokens: np.ndarray, context: int) -> np.ndarray:
        """Seconds per unit, shape (B, U), for B token counts (``tokens``, shape (B,)); computed on one
        representative of each group of identical units and spread back."""
        assert self.kernels is not None and self._shapes_rep is not None
        r = self._rep
        n = np.asarray(tokens, dtype=float)[:, None]
        window = self.window[r]
        if phase == "decode":
            pairs = n * np.minimum(float(context), window)
            flops = self.pair_decode[r] * pairs / tp
        else:
            pairs = np.array([[causal_pairs(int(k), w) for w in window] for k in n[:, 0]])
            flops = self.pair_prefill[r] * pairs / tp
        shards = self.kv_shards(tp)[r]
        x = KernelInputs(
            tp=tp,
            phase=phase,
            tokens=n,
            kv_bytes=self.kv_bpt[r] * pairs / shards,
            attn_flops=flops,
            # Q and O of the local heads (bf16) and the new tokens' K and V
            attn_bytes=n * 4.0 * self.profile.model.num_attention_heads / tp * self.profile.model.head_dim
            + self.kv_bpt[r] * np.minimum(n, window) / shards,
            kv_heads_per_gpu=np.where(self.shardable[r], self.kv_heads[r] / shards, 1.0),
            is_decoder=self.is_decoder[r],
            is_head=self.is_head[r],
            is_embed=self.is_embed[r],
            has_attention=(self.has_attention & self.is_decoder)[r],
            n_experts=self.n_experts[r],
            topk=self.topk[r],
            embed_bytes=np.minimum(self.weight[r] / tp, n * self.act_bpt[r] / 2),
            peak=self.peak[r],
            gemm_dtype=self.gemm_dtype,
            cuda_graphs=self.cuda_graphs or phase == "prefill",
        )
        kern = unit_kernel_times(self._shapes_rep, x, self.kernels, self.gpu)
        comm = self.n_ar[r] * self.allreduce_time(tp, self.ar_bpt[r] * n)
        return (kern + comm)[:, self._inv]

    def _decode_table(self, tp: int, tokens: int, context: int) -> np.ndarray:
        """Decode seconds per unit at ``tokens`` sequences, from a table over every batch size up to the
        next power of two (one vectorised evaluation serves the search's many batch sizes)."""
        key = (tp, context)
        table = self._decode_tables.get(key)
        if table is None or tokens > len(table):
            size = max(64, 1 << (int(tokens) - 1).bit_length())
            table = self._kernel_path(tp, "decode", np.arange(1, size + 1, dtype=float), context)
            self._decode_tables[key] = table
        return table[tokens - 1].copy()

    def _analytic(self, tp: int, phase: str, tokens: int, context: int) -> np.ndarray:
        if self.kernels is not None:
            if phase == "decode":
                return self._decode_table(tp, tokens, context)
            return self._kernel_path(tp, phase, np.array([float(tokens)]), context)[0]
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
        if self.kernels is not None:
            return np.zeros(len(self.profile.units))  # the kernel floors are inside the kernel times
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
            # a TP-shard profile's times are one rank's at its TP degree: the ratio is taken there
            base = float(self._analytic(self._measured_tp, phase, p.tokens, p.context)[i])
            r = p.time_s / base
            d = math.hypot(
                math.log2(p.tokens) - math.log2(tokens), math.log2(max(p.context, 1)) - math.log2(max(ctx_q, 1))
            )
            if d < 1e-9:
                return r
            ws.append(1.0 / d**2)
            rs.append(math.log(r))
        return math.exp(sum(w * r for w, r in zip(ws, rs, strict=True)) / sum(ws))

    def profile_note(self) -> str | None:
        """Why a measured profile's times are not used for this GPU kind (None when they are, or when
        the profile is not a measured one): a plan note."""
        p = self.profile
        if p.kind != "measured" or self.measured:
            return None
        if self.eager_profile_skipped:
            return (
                f"the profile's times were measured eagerly on {p.device}; the engine replays decode from CUDA "
                "graphs, so the engine-realistic kernel model times it instead (its bytes are used)"
            )
        return f"the profile was measured on {p.device}, not {self.gpu.name}: its bytes are used, its times are not"

    def describe(self) -> dict[str, object]:
        """Provenance of the numbers this model produces."""
        if self.measured:
            source = f"measured points ({profile_timing(self.profile)} timing, interpolated) with analytic TP scaling"
        elif self.kernels is not None:
            k = self.kernels
            source = f"shape-aware kernel model ({k.engine}, {'CUDA graphs' if self.cuda_graphs else 'eager'})"
            if self.gpu.name in self.profile.calibration:
                source += f" fitted at plan time to {self.efficiency.source}"
            if self.eager_profile_skipped:
                source += (
                    f"; the profile's times were measured eagerly on {self.gpu.name} and the engine replays "
                    "CUDA graphs, so the engine-realistic kernel model is used instead"
                )
        else:
            source = "analytic roofline" + (" (calibrated)" if self.gpu.name in self.profile.calibration else "")
        return {
            "cost_model": COST_MODEL_VERSION,
            "gpu": self.gpu.name,
            "time_source": source,
            "efficiency": self.efficiency.model_dump(),
        }

"""Shape-aware kernel times: GEMM, attention (prefill FMHA, decode paged) and MoE grouped GEMM (pure numpy).

Each kernel kind has a small set of coefficients per GPU kind and engine, fitted offline to measured
kernel tables (``ppplan/core/data/kernels.json``, fitted by :mod:`ppplan.profiler.kerneldb`; the file
names its sources). The forms below carry the shape effects a single efficiency factor misses:

* GEMM (M, N, K): output tiles of ``tile_m × tile_n`` run in waves over the SMs; the last wave is
  paid whole (tile and wave quantisation). Memory time reads A, B and writes C at a fitted share of
  HBM bandwidth; a shard with few output tiles streams through few SMs, so bandwidth ramps with the
  tile count (``tiles / (tiles + tiles_half)``, split-K recovers part of it). Time =
  ``floor + max(C, M) + ω·min(C, M)``.
* Decode attention (paged): reads the KV cache at a share of bandwidth that ramps with the parallel
  work ``batch × KV heads per GPU`` (one KV head per GPU leaves most SMs idle) and with the query
  heads per KV head the kernel must also compute; prefill attention (causal FMHA) reaches a share of
  peak that depends on the head dim and ramps with the sequence length.
* MoE: the touched experts' weights are read once; each expert's tokens form one GEMM of
  ``tokens · top-k / experts`` rows, with its own fitted efficiencies (grouped-GEMM kernels).

All times in seconds, bytes in bytes, FLOP/s in FLOP/s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from ppplan.core.gpus import core_data
from ppplan.core.profile import Efficiency

__all__ = [
    "AttentionFit",
    "GemmFit",
    "KernelFit",
    "MoeFit",
    "decode_attention_time",
    "gemm_time",
    "kernel_fit_for",
    "kernel_fit_from_dict",
    "moe_time",
    "prefill_attention_time",
]

ArrayLike = float | np.ndarray

#: the shallowest K slice a split-K GEMM makes (elements)
SPLIT_K_MIN = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class GemmFit:
    """Coefficients of the GEMM time model of one GPU kind, engine and dtype."""

    eta_c: float
    """achieved / peak FLOP/s of a large, wave-aligned GEMM"""
    eta_m: float
    """achieved / catalog HBM bandwidth of a large memory-bound GEMM"""
    floor_s: float
    """fixed seconds per kernel (launch inside a CUDA graph, prologue, epilogue)"""
    overlap: float
    """share of the smaller of compute and memory time not hidden under the larger"""
    tiles_half: float
    """output tiles at which a memory-bound GEMM reaches half of ``eta_m`` (few tiles, few SMs busy)"""
    tile_m: int = 128
    tile_n: int = 128


@dataclass(frozen=True, slots=True, kw_only=True)
class AttentionFit:
    """Coefficients of decode (paged) and prefill (causal FMHA) attention of one GPU kind and engine."""

    decode_eta_m: float
    """share of HBM bandwidth reading the KV cache with ample parallel work"""
    decode_work_half: float
    """batch × KV heads per GPU at which decode attention reaches half of ``decode_eta_m``"""
    decode_eta_c: float
    """share of peak FLOP/s of the decode kernel's compute (many query heads per KV head)"""
    decode_floor_s: float
    prefill_eta_c: dict[int, float]
    """share of peak FLOP/s of causal prefill attention per head dim (interpolated in log head dim)"""
    prefill_tokens_half: float
    """sequence length at which prefill attention reaches half of its peak share"""
    prefill_floor_s: float
    decode_work_s: float = 0.0
    prefill_eta_m: float = 1.0
    """share of HBM bandwidth prefill attention moves Q, K, V and O at (many KV heads: memory bound)"""
    """seconds per (sequence, KV head) work item of the decode kernel (block scheduling, Q loads and
    output writes): what dominates at hundreds of sequences with short caches"""


@dataclass(frozen=True, slots=True, kw_only=True)
class MoeFit:
    """Coefficients of the fused MoE (grouped GEMM) of one GPU kind and engine."""

    eta_c: float
    eta_m: float
    floor_s: float
    overlap: float
    token_s: float = 0.0
    """seconds per token in the batch (routing, top-k, permute and un-permute: paid for every token
    whatever share of the experts this GPU holds)"""
    expert_s: float = 0.0
    """seconds per touched expert (its GEMM tiles' setup)"""


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelFit:
    """Everything the shape-aware model needs for one GPU kind and engine, with its provenance."""

    gpu: str
    engine: str
    gemm: dict[str, GemmFit]
    """per compute dtype ('bf16', 'fp8'); others use 'bf16' with their own byte counts"""
    attention: AttentionFit
    moe: MoeFit | None
    eager_floor_s: float
    """fixed seconds per kernel without CUDA graphs (host launch bound): the kernel takes at least this"""
    source: str
    fit_error: dict[str, float] = field(default_factory=dict)

    def summary(self, cuda_graphs: bool) -> Efficiency:
        """The fit summarised as the roofline's factors (large-GEMM shares, kernel floor), for a plan's
        provenance."""
        g = self.gemm_fit("bf16")
        return Efficiency(
            compute=g.eta_c,
            memory=g.eta_m,
            overhead_s=g.floor_s if cuda_graphs else self.eager_floor_s,
            overlap=g.overlap,
            fit_error=dict(self.fit_error),
            source=f"shape-aware kernel model, {self.engine}, {'CUDA graphs' if cuda_graphs else 'eager'}: "
            f"{self.source}",
        )

    def gemm_fit(self, dtype: str) -> GemmFit:
        """The GEMM coefficients of ``dtype`` (bf16's for a dtype without its own table)."""
        return self.gemm.get(dtype, self.gemm["bf16"])


def _ramp(x: ArrayLike, half: float) -> ArrayLike:
    return x / (x + half) if half > 0 else np.ones_like(x)


def gemm_time(
    m: ArrayLike,
    n: ArrayLike,
    k: ArrayLike,
    fit: GemmFit,
    *,
    peak: ArrayLike,
    bw: float,
    sms: int,
    in_bytes: ArrayLike,
    out_bytes: float = 2.0,
) -> ArrayLike:
    """Seconds of ``C[m, n] = A[m, k] · B[k, n]`` (B: weights of ``in_bytes`` per element).

    Args:
        m, n, k: GEMM sizes (arrays broadcast).
        fit: fitted coefficients.
        peak: dense peak FLOP/s of the compute dtype; bw: HBM bytes/s; sms: streaming multiprocessors.
        in_bytes: bytes per weight element (activations are read at 2 bytes).
    """
    m = np.maximum(np.asarray(m, dtype=float), 1.0)
    n = np.maximum(np.asarray(n, dtype=float), 1.0)
    k = np.maximum(np.asarray(k, dtype=float), 1.0)
    tiles = np.ceil(m / fit.tile_m) * np.ceil(n / fit.tile_n)
    # split-K: with fewer output tiles than SMs, K is cut into slices (≥ SPLIT_K_MIN deep) run in parallel
    splits = np.clip(np.floor(sms / tiles), 1.0, np.maximum(1.0, np.floor(k / SPLIT_K_MIN)))
    waves = np.ceil(tiles * splits / sms)
    compute = waves * sms * (fit.tile_m * fit.tile_n * 2.0) * (k / splits) / (peak * fit.eta_c)
    nbytes = m * k * 2.0 + k * n * in_bytes + m * n * out_bytes
    memory = nbytes / (bw * fit.eta_m * _ramp(tiles * splits, fit.tiles_half))
    return fit.floor_s + np.maximum(compute, memory) + fit.overlap * np.minimum(compute, memory)


def decode_attention_time(
    batch: ArrayLike,
    kv_bytes: ArrayLike,
    flops: ArrayLike,
    kv_heads_per_gpu: ArrayLike,
    fit: AttentionFit,
    *,
    peak: ArrayLike,
    bw: float,
) -> ArrayLike:
    """Seconds of one paged decode-attention kernel.

    Args:
        batch: sequences; kv_bytes: KV-cache bytes read on this GPU; flops: its FLOPs (QK and PV);
        kv_heads_per_gpu: KV heads this GPU holds (MLA's latent: 1).
    """
    work = np.asarray(batch, dtype=float) * np.asarray(kv_heads_per_gpu, dtype=float)
    memory = kv_bytes / (bw * fit.decode_eta_m * _ramp(work, fit.decode_work_half))
    compute = flops / (peak * fit.decode_eta_c)
    return fit.decode_floor_s + np.maximum(memory, compute) + fit.decode_work_s * work


def _head_dim_eta(fit: AttentionFit, head_dim: ArrayLike) -> ArrayLike:
    dims = sorted(fit.prefill_eta_c)
    return np.interp(np.log2(head_dim), np.log2(dims), [fit.prefill_eta_c[d] for d in dims])


def prefill_attention_time(
    tokens: ArrayLike,
    flops: ArrayLike,
    head_dim: ArrayLike,
    fit: AttentionFit,
    *,
    peak: ArrayLike,
    nbytes: ArrayLike = 0.0,
    bw: float = 1.0,
) -> ArrayLike:
    """Seconds of causal prefill attention of ``tokens`` tokens per sequence doing ``flops`` FLOPs and
    moving ``nbytes`` (Q, K, V read, O written) at HBM bandwidth ``bw``: the larger of the two."""
    eta = _head_dim_eta(fit, head_dim) * _ramp(np.asarray(tokens, dtype=float), fit.prefill_tokens_half)
    return fit.prefill_floor_s + np.maximum(flops / (peak * eta), nbytes / (bw * fit.prefill_eta_m))


def moe_time(
    tokens: ArrayLike,
    experts: ArrayLike,
    topk: ArrayLike,
    hidden: ArrayLike,
    inter: ArrayLike,
    fit: MoeFit,
    gemm: GemmFit,
    *,
    peak: ArrayLike,
    bw: float,
    sms: int,
    in_bytes: ArrayLike,
) -> ArrayLike:
    """Seconds of a fused MoE (gate/up and down grouped GEMMs) on one GPU.

    Args:
        tokens: tokens in the batch; experts: routed experts on this GPU (all of them under TP);
        topk: experts per token (routed to this GPU's experts); hidden: model width; inter: expert
        intermediate size per GPU (split by TP); in_bytes: bytes per expert weight element.
    """
    n = np.asarray(tokens, dtype=float)
    e = np.maximum(np.asarray(experts, dtype=float), 1.0)
    touched = e * (1.0 - np.power(1.0 - np.minimum(topk / e, 1.0), n))
    rows = n * topk / np.maximum(touched, 1.0)  # tokens per touched expert
    tiles = touched * np.ceil(rows / gemm.tile_m) * np.ceil((3.0 * inter) / gemm.tile_n)
    waves = np.ceil(tiles / sms)
    flops = waves * sms * gemm.tile_m * gemm.tile_n * 2.0 * hidden
    compute = flops / (peak * fit.eta_c)
    nbytes = touched * 3.0 * hidden * inter * in_bytes + n * topk * (hidden * 4.0 + inter * 6.0)
    memory = nbytes / (bw * fit.eta_m)
    fixed = fit.floor_s + fit.token_s * n + fit.expert_s * touched
    return fixed + np.maximum(compute, memory) + fit.overlap * np.minimum(compute, memory)


def kernel_fit_from_dict(gpu: str, engine: str, d: dict[str, Any], source: str) -> KernelFit:
    """A :class:`KernelFit` from its JSON form (``kernels.json`` or a fit made at plan time)."""
    att = dict(d["attention"])
    att["prefill_eta_c"] = {int(k): float(v) for k, v in att["prefill_eta_c"].items()}
    return KernelFit(
        gpu=gpu,
        engine=engine,
        gemm={k: GemmFit(**v) for k, v in d["gemm"].items()},
        attention=AttentionFit(**att),
        moe=MoeFit(**d["moe"]) if d.get("moe") else None,
        eager_floor_s=float(d["eager_floor_s"]),
        source=source,
        fit_error={k: float(v) for k, v in d.get("fit_error", {}).items()},
    )


@cache
def _kernels_data() -> dict[str, Any]:
    return core_data("kernels.json")


def kernel_fit_for(gpu: str, engine: str | None) -> KernelFit | None:
    """The committed fit of ``gpu`` (catalog name) for ``engine`` (default: the file's default engine),
    or None when the GPU kind has no measured kernel data."""
    data = _kernels_data()
    entry = data["gpus"].get(gpu) or data["gpus"].get(data.get("same_silicon", {}).get(gpu, ""))
    if entry is None:
        return None
    engines = entry["engines"]
    name = engine if engine in engines else data["default_engine"]
    if name not in engines:
        name = next(iter(engines))
    src = f"{data['source']} [{entry['table']}/{name} {engines[name].get('version', '')}]"
    return kernel_fit_from_dict(gpu, str(name), engines[name], src)

"""A planning unit as the kernels an engine runs for it, timed by the shape-aware model (pure numpy).

A decoder layer at TP degree t with n tokens runs: the QKV projection GEMM (n × (H/t + 2·KV/t)·d ×
hidden), attention (decode: paged over the cache; prefill: causal FMHA), the output projection
(n × hidden × H·d/t), the MLP's gate/up and down GEMMs (n × 2I/t × hidden, n × hidden × I/t) or the
fused MoE of the routed experts, two TP all-reduces and four small element-wise kernels (two RMSNorms
with the residual add, rotary embedding, the gated activation). The LM head is one GEMM over the
vocabulary shard; the embedding is one gather. Shapes come from the profile: the model's width,
heads and head dim, and per unit the split of its active matmul parameters into attention
projections, dense MLP and routed experts (an MLA layer's projections count as dense GEMMs of the
same width).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ppplan.core.dtypes import element_bytes
from ppplan.core.gpus import GPUSpec
from ppplan.core.kernels import (
    KernelFit,
    decode_attention_time,
    gemm_time,
    moe_time,
    prefill_attention_time,
)
from ppplan.core.profile import Profile

__all__ = ["ELEMENTWISE_KERNELS", "UnitShapes"]

#: small element-wise kernels per decoder layer (2 fused add+RMSNorm, rotary, SiLU·mul)
ELEMENTWISE_KERNELS = 4


@dataclass(frozen=True, slots=True)
class UnitShapes:
    """Per-unit GEMM and attention sizes (arrays over the profile's units; 0 where a kernel is absent)."""

    hidden: float
    heads: float
    head_dim: float
    qkv: np.ndarray
    """1 where the unit has separate Q/K/V and output projections (full or sliding attention)"""
    inter: np.ndarray
    """dense MLP intermediate size (gated: gate, up and down of ``hidden × inter``)"""
    expert_inter: np.ndarray
    """routed expert intermediate size"""
    in_bytes: np.ndarray
    """bytes per weight element"""
    vocab: np.ndarray
    """head: vocabulary rows of the LM head GEMM"""

    def take(self, idx: np.ndarray) -> UnitShapes:
        """The shapes of the units at ``idx`` only."""
        return UnitShapes(
            hidden=self.hidden,
            heads=self.heads,
            head_dim=self.head_dim,
            qkv=self.qkv[idx],
            inter=self.inter[idx],
            expert_inter=self.expert_inter[idx],
            in_bytes=self.in_bytes[idx],
            vocab=self.vocab[idx],
        )

    @classmethod
    def of(cls, profile: Profile) -> UnitShapes:
        """Derive the shapes of every unit of ``profile`` from its parameter and byte counts."""
        m = profile.model
        hidden, heads, hd = float(m.hidden_size), float(m.num_attention_heads), float(m.head_dim)
        qkv, inter, e_inter, in_b, vocab = [], [], [], [], []
        for u in profile.units:
            bpp = u.weight_bytes / u.params if u.params else 2.0
            if u.kind == "head" and not 0 < bpp <= 8:
                # a head tied to the embedding counts the matrix's bytes but only the norm's parameters
                bpp = element_bytes(profile.act_dtype)
            lin = u.linear_flops_per_token / 2.0
            std = u.kind == "decoder" and u.attention in ("full", "sliding")
            kv = u.kv_proj_bytes / bpp
            qo = 2.0 * heads * hd * hidden if std else 0.0
            e_active = 0.0
            ei = 0.0
            if u.num_experts:
                per_expert = u.expert_weight_bytes / bpp / u.num_experts
                ei = per_expert / (3.0 * hidden)
                e_active = per_expert * u.experts_per_token
            dense = max(0.0, lin - e_active - qo - kv) if u.kind == "decoder" else 0.0
            qkv.append(1.0 if std else 0.0)
            inter.append(dense / (3.0 * hidden))
            e_inter.append(ei)
            in_b.append(bpp)
            vocab.append(lin / hidden if u.kind == "head" else 0.0)
        arr = lambda xs: np.array(xs, dtype=float)  # noqa: E731
        return cls(
            hidden=hidden,
            heads=heads,
            head_dim=hd,
            qkv=arr(qkv),
            inter=arr(inter),
            expert_inter=arr(e_inter),
            in_bytes=arr(in_b),
            vocab=arr(vocab),
        )


def _floor(t: Any, floor: float) -> np.ndarray:
    return np.maximum(t, floor) if floor > 0 else np.asarray(t)


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelInputs:
    """What :func:`unit_kernel_times` needs besides the shapes (arrays over units)."""

    tp: int
    phase: str
    tokens: np.ndarray
    """tokens per forward, shape (B, 1): one row per batch size (decode) or prompt length (prefill)"""
    kv_bytes: np.ndarray
    """KV-cache bytes read per GPU (decode) by the attention kernel"""
    attn_flops: np.ndarray
    """attention FLOPs per GPU"""
    attn_bytes: np.ndarray
    """prefill: Q, K, V and O bytes the attention kernel moves per GPU (decode: unused)"""
    kv_heads_per_gpu: np.ndarray
    is_decoder: np.ndarray
    is_head: np.ndarray
    is_embed: np.ndarray
    has_attention: np.ndarray
    n_experts: np.ndarray
    topk: np.ndarray
    embed_bytes: np.ndarray
    peak: np.ndarray
    gemm_dtype: str
    cuda_graphs: bool


def unit_kernel_times(s: UnitShapes, x: KernelInputs, fit: KernelFit, gpu: GPUSpec) -> np.ndarray:
    """Seconds of each unit's kernels (collectives excluded) on one GPU of the TP group: shape (B, U)
    for B token counts (``x.tokens``, shape (B, 1)) and the U units of ``s``."""
    t = float(x.tp)
    n = x.tokens
    floor = 0.0 if x.cuda_graphs else fit.eager_floor_s
    g = fit.gemm_fit(x.gemm_dtype)
    sms = gpu.sms or 100
    kw: dict[str, Any] = {"peak": x.peak, "bw": gpu.hbm_bw, "sms": sms, "in_bytes": s.in_bytes}
    # the LM head computes logits for the sampled tokens only: one per prompt in prefill
    m = np.where(x.is_head & (x.phase == "prefill"), 1.0, n)
    hq = s.heads / t
    # the five GEMMs (QKV, output, gate/up, down, LM head) of every unit in one vectorised call
    qkv_n = (hq + 2.0 * x.kv_heads_per_gpu) * s.head_dim
    hid = np.full_like(s.inter, s.hidden)
    n_dim = np.stack([qkv_n, hid, 2.0 * s.inter / t, hid, s.vocab / t])
    k_dim = np.stack([hid, np.full_like(s.inter, hq * s.head_dim), hid, np.maximum(s.inter / t, 1.0), hid])
    dense = (s.inter > 0).astype(float)
    mask = np.stack([s.qkv, s.qkv, dense, dense, x.is_head.astype(float)])
    gemms = _floor(gemm_time(m[None], n_dim[:, None, :], k_dim[:, None, :], g, **kw), floor) * mask[:, None, :]
    total = gemms[:4].sum(axis=0)
    if fit.moe is not None and np.any(x.n_experts > 0):
        moe = moe_time(n, x.n_experts, x.topk, s.hidden, np.maximum(s.expert_inter / t, 1.0), fit.moe, g, **kw)
        total += np.where(x.n_experts > 0, _floor(moe, floor), 0.0)
    elif np.any(x.n_experts > 0):
        # no MoE table: the routed experts as one GEMM per touched expert's rows
        e = np.maximum(x.n_experts, 1.0)
        touched = e * (1.0 - np.power(1.0 - np.minimum(x.topk / e, 1.0), n))
        rows = n * x.topk / np.maximum(touched, 1.0)
        per = gemm_time(rows, 3.0 * s.expert_inter / t, s.hidden, g, **kw)
        total += np.where(x.n_experts > 0, touched * per, 0.0)
    att = fit.attention
    if x.phase == "decode":
        a = decode_attention_time(n, x.kv_bytes, x.attn_flops, x.kv_heads_per_gpu, att, peak=x.peak, bw=gpu.hbm_bw)
    else:
        a = prefill_attention_time(n, x.attn_flops, s.head_dim, att, peak=x.peak, nbytes=x.attn_bytes, bw=gpu.hbm_bw)
    total += np.where(x.has_attention, _floor(a, floor), 0.0)
    # element-wise kernels: read and write the n × hidden activations a few times, floor each
    ew = g.floor_s + 3.0 * n * s.hidden * 2.0 / (gpu.hbm_bw * g.eta_m)
    total += np.where(x.is_decoder, ELEMENTWISE_KERNELS * _floor(np.asarray(ew), floor), 0.0)
    total = np.where(x.is_head, gemms[4] + _floor(np.asarray(ew), floor), total)
    embed = g.floor_s + x.embed_bytes / (gpu.hbm_bw * g.eta_m)
    return np.where(x.is_embed, _floor(embed, floor), total)

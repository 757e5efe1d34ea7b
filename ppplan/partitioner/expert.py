"""Expert parallelism for MoE units: per-GPU bytes, the all-to-all and the expert load imbalance.

One pipeline stage runs on ``tp × attention_dp`` GPUs (:class:`ExpertDegrees`):

* **attention and every other non-routed weight** (shared experts, dense MLP layers, router, norms,
  embedding, head) is split by attention TP ``tp`` and replicated on each of the ``attention_dp``
  ranks: vLLM's layout under ``--data-parallel-size`` with ``--enable-expert-parallel``, and
  SGLang's under ``--enable-dp-attention`` when shared experts are not TP-split (DeepEP's
  backend replicates them; SGLang's default TP-splits shared experts and dense MLPs over all the
  stage's GPUs, which needs less memory than assumed here);
* **routed experts** are spread over ``ep`` ranks, ``E / ep`` whole experts each (vLLM's and
  SGLang's linear placement: rank r holds experts r·E/ep … (r+1)·E/ep − 1), each rank's experts
  TP-split over the remaining ``moe_tp = tp·attention_dp / ep`` GPUs (SGLang ``moe_tp_size``);
  ``ep = 1`` is today's layout, experts split by TP like dense layers;
* **KV cache** per attention-DP rank: each rank holds only its own sequences, split over its ``tp``
  ranks where the heads allow. MLA's latent cache is not split by TP (every TP rank holds all of
  it), so DP attention removes that replication.

The all-to-all of a MoE layer: every token goes to its top-k experts (dispatch) and comes back
weighted (combine). Each GPU sends its share ``tokens / tp`` of its DP rank's tokens, ``k`` copies
of ``hidden`` values each, FP8 for dispatch under FP8 weights (DeepEP) else the activation dtype,
the activation dtype for combine. Copies spread evenly over the EP ranks: ``(local − 1)/ep`` of
them cross NVLink inside the node, ``(ep − local)/ep`` cross the network (``local`` = EP ranks per
node); the busiest rank receives ``imbalance`` × the mean. Time = latency + the slower link.

Constants, with their sources:

* DeepEP (github.com/deepseek-ai/DeepEP, docs/legacy.md, H800 + CX7 400 Gb/s, hidden 7168, top-8,
  FP8 dispatch, BF16 combine): normal kernels reach 153/158 GB/s over NVLink at EP8 (of ~160 GB/s)
  and 43–58 GB/s over RDMA at EP16–64 (of ~50 GB/s); low-latency kernels at 128 tokens take 77 us
  (EP8) to 194 us (EP256) for dispatch, 114–360 us for combine, i.e. 39–48 GB/s RDMA at EP ≥ 32.
  Hence :data:`INTER_EFFICIENCY` 0.85 and :data:`INTER_LATENCY_S` 20 us (EP256 dispatch: 194 us
  against 7.6 MB / 42.5 GB/s = 178 us of transfer).
* NCCL all-to-all inside a node (aiconfigurator-core 0.12.0 measured tables, systems/data/h100_sxm,
  as ``ppplan/core/data/collectives.json`` carries them):
  8×H100 moves 512 MiB in 1.49 ms (315 GB/s bus bandwidth of 450 GB/s: :data:`INTRA_EFFICIENCY`
  0.7) and small messages in 7–16 us (:data:`INTRA_LATENCY_S` 10 us). A measured curve can be
  passed instead (:attr:`EPLinks.intra_curve`).
* Expert load imbalance (busiest EP rank's routed tokens / the mean): :data:`DEFAULT_IMBALANCE` 1.5.
  In UC Berkeley's ADRS case study ("MoE load balancing", adrs-ucb.notion.site, Oct 2025)
  DeepSeek's open-source EPLB reaches a load balance factor (mean / max tokens per GPU) of 0.66,
  i.e. max/mean 1.52; UltraEP (arXiv 2606.04101) measures 1.30–4.01 without balancing across
  106B–671B MoE models (training and prefill). Configurable (``imbalance=``); 1.0 when ``ep = 1``
  (every GPU holds a slice of every expert).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ppplan.core.dtypes import element_bytes
from ppplan.core.errors import PpplanError
from ppplan.core.gpus import GPUSpec
from ppplan.core.profile import Profile

__all__ = [
    "DEFAULT_IMBALANCE",
    "FP8_DISPATCH_BYTES",
    "INTER_EFFICIENCY",
    "INTER_LATENCY_S",
    "INTRA_EFFICIENCY",
    "INTRA_LATENCY_S",
    "EPLinks",
    "ExpertDegrees",
    "ExpertModel",
    "expert_layouts",
    "valid_ep_degrees",
]

DEFAULT_IMBALANCE = 1.5
"""busiest EP rank's routed tokens / the mean (see the module doc for the measurements)"""
INTRA_EFFICIENCY = 0.7
"""achieved / catalog NVLink bandwidth of an all-to-all inside a node"""
INTER_EFFICIENCY = 0.85
"""achieved / catalog NIC bandwidth of an all-to-all across nodes"""
INTRA_LATENCY_S = 10e-6
"""fixed seconds of one all-to-all inside a node"""
INTER_LATENCY_S = 20e-6
"""fixed seconds of one all-to-all across nodes"""
FP8_DISPATCH_BYTES = 1.0 + 4.0 / 128
"""bytes per dispatched value in FP8: one byte plus an fp32 scale per 128 values (DeepEP)"""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpertDegrees:
    """Degrees of one stage of a MoE model.

    Raises:
        PpplanError: a degree below 1, or ``ep`` not dividing the stage's GPUs (field ``ep``).
    """

    tp: int
    """attention TP inside one attention-DP rank"""
    attention_dp: int = 1
    """data-parallel attention ranks of the stage (1 = TP attention)"""
    ep: int = 1
    """expert-parallel ranks the routed experts are spread over (1 = split by TP)"""

    def __post_init__(self) -> None:
        for name in ("tp", "attention_dp", "ep"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PpplanError(name, v, rule="must be a positive integer")
        if self.gpus % self.ep:
            raise PpplanError(
                "ep",
                self.ep,
                rule=f"must divide the stage's {self.gpus} GPUs (tp {self.tp} × attention_dp {self.attention_dp})",
            )

    @property
    def gpus(self) -> int:
        """GPUs of the stage: tp × attention_dp."""
        return self.tp * self.attention_dp

    @property
    def moe_tp(self) -> int:
        """GPUs each EP rank's experts are TP-split over: gpus / ep."""
        return self.gpus // self.ep


def valid_ep_degrees(num_experts: int, gpus: int, redundant_experts: int = 0) -> list[int]:
    """EP degrees a stage of ``gpus`` GPUs can run: divisors of ``gpus`` that divide the routed
    experts (with redundant experts, the expert slots ``num_experts + redundant_experts``); [1]
    for a dense model."""
    if num_experts <= 0:
        return [1]
    slots = num_experts + redundant_experts
    return [e for e in range(1, gpus + 1) if gpus % e == 0 and slots % e == 0]


def expert_layouts(num_experts: int, gpus: int, tps: list[int], redundant_experts: int = 0) -> list[ExpertDegrees]:
    """Every (attention TP, attention DP, EP) of a stage of ``gpus`` GPUs with attention TP in
    ``tps`` (the engines' TP rule, :func:`partitioner.space.valid_tp_degrees`); DP attention only
    with experts spread (ep > 1), as vLLM and SGLang run it."""
    out = []
    for t in tps:
        if gpus % t:
            continue
        for e in valid_ep_degrees(num_experts, gpus, redundant_experts):
            dp = gpus // t
            if dp > 1 and e == 1:
                continue
            out.append(ExpertDegrees(tp=t, attention_dp=dp, ep=e))
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class EPLinks:
    """Bandwidths and latencies of a stage's all-to-all (bytes/s per GPU and direction, seconds)."""

    gpus_per_node: int
    nvlink_bw: float
    network_bw: float
    intra_latency_s: float = INTRA_LATENCY_S
    inter_latency_s: float = INTER_LATENCY_S
    intra_efficiency: float = INTRA_EFFICIENCY
    inter_efficiency: float = INTER_EFFICIENCY
    intra_curve: Callable[[int, np.ndarray], np.ndarray] | None = None
    """measured seconds of an all-to-all of a per-GPU buffer of ``bytes`` over ``gpus`` GPUs inside
    a node (e.g. ``functools.partial(collectives.op_time, 'alltoall')``); None: the formula"""

    @classmethod
    def of(cls, gpu: GPUSpec, gpus_per_node: int | None = None) -> EPLinks:
        """The catalog's links of ``gpu`` (nodes of ``gpus_per_node``, default the catalog's)."""
        return cls(gpus_per_node=gpus_per_node or gpu.gpus_per_node, nvlink_bw=gpu.nvlink_bw, network_bw=gpu.network_bw)


class ExpertModel:
    """Per-unit arrays (numpy, one entry per planning unit) of a profile under EP layouts.

    Args:
        profile: the profile (units in order: embedding, decoder layers, head).
        imbalance: busiest EP rank's routed tokens / the mean (≥ 1).
        redundant_experts: extra expert slots EPLB adds over all EP ranks (0: none).

    Raises:
        PpplanError: ``imbalance`` below 1 or not finite, ``redundant_experts`` negative.
    """

    def __init__(self, profile: Profile, *, imbalance: float = DEFAULT_IMBALANCE, redundant_experts: int = 0) -> None:
        if not math.isfinite(imbalance) or not 1.0 <= imbalance <= 100.0:
            raise PpplanError("imbalance", imbalance, rule="must be a number from 1 (perfect balance) to 100")
        if redundant_experts < 0:
            raise PpplanError("redundant_experts", redundant_experts, rule="must be ≥ 0")
        self.profile = profile
        self.imbalance = float(imbalance)
        self.redundant = redundant_experts
        us = profile.units
        f = lambda attr: np.array([float(getattr(u, attr)) for u in us])  # noqa: E731
        self.weight = f("weight_bytes")
        self.expert = f("expert_weight_bytes")
        dense = self.weight - self.expert
        self.replicated = np.minimum(f("replicated_bytes"), dense)
        self.kv_proj = np.minimum(f("kv_proj_bytes"), dense - self.replicated)
        self.dense_split = dense - self.replicated - self.kv_proj
        self.kv_bpt = f("kv_bytes_per_token")
        self.window = np.array([float(u.window) if u.window else math.inf for u in us])
        self.kv_heads = np.array([max(1, u.num_kv_heads) for u in us], dtype=float)
        self.shardable = np.array([u.kv_tp_shardable for u in us])
        self.n_experts = f("num_experts")
        self.topk = f("experts_per_token")
        self.is_moe = (self.n_experts > 0) & (self.expert > 0)
        self.num_experts = int(self.n_experts.max(initial=0))
        self.hidden = float(profile.model.hidden_size)
        self.act_bytes = element_bytes(profile.act_dtype)
        self.dispatch_bytes = FP8_DISPATCH_BYTES if profile.weight_dtype == "fp8" else self.act_bytes

    # ---- degrees ----------------------------------------------------------------------------------
    def check(self, deg: ExpertDegrees) -> None:
        """Raise unless ``ep`` splits this model's routed experts (field ``ep``)."""
        if deg.ep == 1:
            return
        if self.num_experts == 0:
            raise PpplanError("ep", deg.ep, rule=f"{self.profile.model.name} has no routed experts; use ep = 1")
        slots = self.num_experts + self.redundant
        if slots % deg.ep:
            raise PpplanError(
                "ep",
                deg.ep,
                rule=f"must divide the {slots} expert slots of {self.profile.model.name} (routed experts"
                f" {self.num_experts} + redundant {self.redundant})",
            )

    def load_factor(self, deg: ExpertDegrees) -> float:
        """Busiest GPU's routed work / the mean: the imbalance when experts are spread, else 1."""
        return self.imbalance if deg.ep > 1 else 1.0

    def experts_per_rank(self, deg: ExpertDegrees) -> np.ndarray:
        """Expert slots each EP rank holds, per unit (0 for units without routed experts)."""
        slots = self.n_experts + np.where(self.is_moe, float(self.redundant), 0.0)
        return np.ceil(slots / deg.ep)

    # ---- memory -----------------------------------------------------------------------------------
    def kv_shards(self, tp: int) -> np.ndarray:
        """Ranks each unit's KV cache is split over inside one attention-DP rank (1 for MLA)."""
        return np.where(self.shardable, np.minimum(float(tp), self.kv_heads), 1.0)

    def routed_bytes_per_gpu(self, deg: ExpertDegrees) -> np.ndarray:
        """Routed-expert weight bytes each GPU holds, per unit: its EP rank's experts / moe_tp."""
        per_expert = np.divide(self.expert, self.n_experts, out=np.zeros_like(self.expert), where=self.is_moe)
        return per_expert * self.experts_per_rank(deg) / deg.moe_tp

    def dense_bytes_per_gpu(self, deg: ExpertDegrees) -> np.ndarray:
        """Non-routed weight bytes each GPU holds, per unit: split by attention TP, replicated over DP."""
        return self.dense_split / deg.tp + self.replicated + self.kv_proj / self.kv_shards(deg.tp)

    def weight_bytes_per_gpu(self, deg: ExpertDegrees) -> np.ndarray:
        """Weight bytes each GPU of the stage holds, per unit (the fullest GPU when ranks differ)."""
        self.check(deg)
        return self.dense_bytes_per_gpu(deg) + self.routed_bytes_per_gpu(deg)

    def kv_bytes_per_gpu(self, deg: ExpertDegrees, sequences: int, context: int) -> np.ndarray:
        """KV-cache bytes per GPU, per unit, when the stage holds ``sequences`` sequences of
        ``context`` tokens spread over its attention-DP ranks (the fullest rank: ⌈sequences / dp⌉)."""
        per_rank = math.ceil(sequences / deg.attention_dp)
        return self.kv_bpt * np.minimum(float(context), self.window) * per_rank / self.kv_shards(deg.tp)

    # ---- time -------------------------------------------------------------------------------------
    def alltoall_bytes(self, deg: ExpertDegrees, tokens: float) -> tuple[np.ndarray, np.ndarray]:
        """(dispatch, combine) bytes the busiest GPU moves per MoE unit for ``tokens`` tokens per
        attention-DP rank (0 for units without routed experts, or with ``ep = 1``)."""
        if deg.ep == 1:
            zero = np.zeros_like(self.expert)
            return zero, zero
        copies = np.where(self.is_moe, tokens / deg.tp * self.topk, 0.0) * self.load_factor(deg)
        return copies * self.hidden * self.dispatch_bytes, copies * self.hidden * self.act_bytes

    def alltoall_time(self, deg: ExpertDegrees, tokens: float, links: EPLinks) -> np.ndarray:
        """Seconds of the dispatch plus the combine per unit for ``tokens`` tokens per attention-DP
        rank (one forward: the decode batch of a rank, or its prefill chunk)."""
        dispatch, combine = self.alltoall_bytes(deg, tokens)
        if deg.ep == 1:
            return dispatch
        return self._one_way(deg.ep, dispatch, links) + self._one_way(deg.ep, combine, links)

    def _one_way(self, ep: int, nbytes: np.ndarray, links: EPLinks) -> np.ndarray:
        local = min(ep, links.gpus_per_node)
        if local == ep and links.intra_curve is not None:
            t = np.asarray(links.intra_curve(ep, nbytes), dtype=np.float64)
            return np.where(nbytes > 0, t, 0.0)
        intra = nbytes * (local - 1) / ep / (links.nvlink_bw * links.intra_efficiency)
        inter = nbytes * (ep - local) / ep / (links.network_bw * links.inter_efficiency)
        lat = links.inter_latency_s if ep > local else links.intra_latency_s
        return np.where(nbytes > 0, lat + np.maximum(intra, inter), 0.0)

    def routed_read_bytes_per_gpu(self, deg: ExpertDegrees, tokens: float) -> np.ndarray:
        """Routed-expert weight bytes the busiest GPU reads in one forward of ``tokens`` tokens per
        attention-DP rank: its experts touched by the stage's ``tokens × attention_dp`` tokens
        (each expert with probability 1 − (1 − k/E)^tokens), divided over moe_tp."""
        total = tokens * deg.attention_dp
        frac = np.where(self.is_moe, 1.0 - np.power(1.0 - self.topk / np.maximum(self.n_experts, 1.0), total), 0.0)
        return self.routed_bytes_per_gpu(deg) * frac

    def routed_token_share(self, deg: ExpertDegrees) -> float:
        """Share of the stage's routed expert work (FLOPs: tokens × k × expert size) on the busiest
        GPU: load factor / GPUs. Multiply the stage's routed FLOPs by it."""
        return self.load_factor(deg) / deg.gpus

"""The candidate space of the outer search: which TP × PP × replicas × micro-batch layouts exist.

TP degrees follow the engines' rule (:func:`valid_tp_degrees`), PP runs from 1 to the decoder
layers, replicas fill the cluster without splitting a replica across a node it fits in. The
sequences per replica are searched (:mod:`partitioner.batch`) or pinned; they run as PP micro-batches
(fewer leave bubbles; more only shrink each micro-batch, so M = PP is the best split of a batch).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from ppplan.core.errors import PpplanError
from ppplan.core.gpus import GPUSpec
from ppplan.core.profile import Profile
from ppplan.partitioner.request import PlanRequest

__all__ = [
    "GIB",
    "KV_BLOCK_TOKENS",
    "KV_TAIL_MARGIN",
    "MAX_SEQUENCES",
    "InfeasibleError",
    "Layout",
    "PlanningError",
    "Setup",
    "check_request",
    "degrees",
    "inter_node",
    "layout_of",
    "layouts",
    "paged_kv_tokens",
    "valid_tp_degrees",
]

GIB = 1024**3


class PlanningError(PpplanError):
    """A request that cannot be planned; ``field`` names the offending input."""


class InfeasibleError(PlanningError):
    """No configuration fits in memory; the message says what is needed and what there is."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Layout:
    """One point of the search: degrees and the micro-batching of each replica."""

    tp: int
    pp: int
    replicas: int
    micro_batches: int
    micro_batch_size: int
    """sequences per micro-batch"""
    sequences: int
    """sequences per replica (searched, or the pinned concurrency spread over the replicas)"""
    ep: int = 1
    """expert-parallel ranks of the MoE layers of a stage (1: experts split by TP like dense layers);
    with ``ep > 1`` ``tp`` counts all GPUs of a stage, attention TP × ``attention_dp``"""
    attention_dp: int = 1
    """data-parallel attention ranks per stage (1: TP attention)"""

    @property
    def gpus(self) -> int:
        """GPUs the layout uses: TP × PP × replicas."""
        return self.tp * self.pp * self.replicas

    @property
    def degrees(self) -> tuple[int, int, int]:
        """(TP, PP, replicas): the layout without its micro-batching."""
        return (self.tp, self.pp, self.replicas)


#: KV-cache block of each engine's paged allocator, tokens (vLLM's default block size, SGLang's
#: token-granular pool, TensorRT-LLM's default tokens_per_block)
KV_BLOCK_TOKENS = {"vllm": 16, "sglang": 1, "trtllm": 32}
#: headroom over the mean KV a sequence holds, so that sequences longer than average do not exhaust
#: the block pool (the engines then preempt and recompute)
KV_TAIL_MARGIN = 0.10
#: most sequences per replica the batch search considers: the engines' largest scheduler default
#: (vLLM's max_num_seqs on H100-class GPUs); a pinned concurrency may exceed it
MAX_SEQUENCES = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Setup:
    """The fixed numbers of one request: cluster shape, workload and the memory budget per GPU."""

    gpu: GPUSpec
    count: int
    """GPUs in the cluster"""
    gpus_per_node: int
    nodes: int
    layers: int
    """decoder layers of the model"""
    prompt_tokens: int
    """mean prompt length, tokens"""
    output_tokens: int
    """mean output length, tokens"""
    context: int
    """longest sequence the engine admits (its max-model-len), tokens"""
    kv_tokens: int
    """KV tokens reserved per sequence in flight: ``context`` when the request pins it, else the
    paged average (prompt + half the output, the tail margin, rounded up to the engine's block)"""
    decode_context: int
    """mean cached tokens while decoding"""
    token_budget: int
    """tokens one engine step processes (decode + prefill chunk), vLLM's --max-num-batched-tokens"""
    engine: str
    usable_bytes: float
    """bytes per GPU the engine may use (utilisation × HBM)"""
    reserve_bytes: float
    """bytes per GPU kept for the runtime"""
    tied_embeddings: bool

    @property
    def limit_bytes(self) -> float:
        """Bytes per GPU for weights, KV cache and workspace."""
        return self.usable_bytes - self.reserve_bytes

    @classmethod
    def of(cls, req: PlanRequest, profile: Profile) -> Setup:
        """The setup of ``req`` planned with ``profile``."""
        count = req.gpu_count
        gpn = req.gpus_per_node
        p, o = req.mean_prompt_tokens, req.mean_output_tokens
        engine = req.engine or "vllm"
        return cls(
            gpu=req.gpu,
            count=count,
            gpus_per_node=gpn,
            nodes=math.ceil(count / gpn),
            layers=profile.model.num_layers,
            prompt_tokens=max(1, round(p)),
            output_tokens=max(1, round(o)),
            context=req.kv_context,
            kv_tokens=req.context if req.context is not None else paged_kv_tokens(p + o / 2, engine),
            decode_context=max(1, round(p + o / 2)),
            token_budget=req.prefill_chunk_tokens,
            engine=engine,
            usable_bytes=req.gpu_memory_utilization * req.gpu.hbm_bytes,
            reserve_bytes=req.runtime_reserve_gib * GIB,
            tied_embeddings=profile.model.tie_word_embeddings,
        )


def paged_kv_tokens(mean_tokens: float, engine: str) -> int:
    """KV tokens to reserve per sequence holding ``mean_tokens`` on average: the tail margin, then
    rounded up to whole blocks of the engine's paged allocator."""
    block = KV_BLOCK_TOKENS.get(engine, 16)
    return block * math.ceil(mean_tokens * (1 + KV_TAIL_MARGIN) / block)


def valid_tp_degrees(num_heads: int, num_kv_heads: int, gpus_per_node: int, gpu_count: int) -> list[int]:
    """TP degrees vLLM/SGLang accept: divide the attention heads, divide or are divided by the KV
    heads, and fit inside a node (a TP group never spans nodes)."""
    out = []
    for t in range(1, min(gpus_per_node, gpu_count) + 1):
        if num_heads % t or gpus_per_node % t:
            continue
        if num_kv_heads % t and t % num_kv_heads:
            continue
        out.append(t)
    return out


def _tp_rule(tp: int, heads: int, kv: int, gpn: int, count: int, name: str) -> str:
    if heads % tp:
        return f"{tp} does not divide the {heads} attention heads of {name}"
    if kv % tp and tp % kv:
        return f"{tp} neither divides nor is a multiple of the {kv} KV heads of {name}"
    if tp > min(gpn, count):
        return f"{tp} exceeds the {min(gpn, count)} GPUs of a node (a TP group stays inside a node)"
    return f"{tp} does not divide the {gpn} GPUs of a node"


def check_request(req: PlanRequest, profile: Profile, setup: Setup) -> list[int]:
    """The TP degrees to search, after checking the request's pins against the model.

    Raises:
        PlanningError: a pinned TP the model does not allow, a context beyond the model's
            positions, a pinned PP above the decoder layers.
    """
    ident = profile.model
    tps = valid_tp_degrees(ident.num_attention_heads, ident.num_kv_heads, setup.gpus_per_node, setup.count)
    if req.tp is not None:
        if req.tp not in tps:
            rule = _tp_rule(
                req.tp, ident.num_attention_heads, ident.num_kv_heads, setup.gpus_per_node, setup.count, ident.name
            )
            raise PlanningError("tp", rule=rule)
        tps = [req.tp]
    max_pos = ident.max_position_embeddings
    if max_pos and setup.context > max_pos:
        raise PlanningError(
            "context",
            rule=f"{setup.context} tokens per sequence exceed the {max_pos} positions "
            f"{ident.name} supports (max_position_embeddings)",
        )
    if req.pp is not None and req.pp > setup.layers:
        raise PlanningError(
            "pp",
            rule=f"{req.pp} stages exceed the {setup.layers} decoder layers of {ident.name} "
            "(every stage holds at least one decoder layer)",
        )
    return tps


def _replica_options(setup: Setup, tp: int, pp: int) -> range:
    per = tp * pp
    gpn = setup.gpus_per_node
    # a replica that fits in a node stays inside one; larger ones span whole nodes
    r_max = setup.nodes * (gpn // per) if per <= gpn else setup.count // per
    return range(1, r_max + 1)


def layout_of(tp: int, pp: int, replicas: int, sequences: int) -> Layout:
    """The layout of ``sequences`` per replica on TP × PP × replicas: PP micro-batches in flight (fewer
    only when there are fewer sequences), the sequences spread evenly over them."""
    m = max(1, min(pp, sequences))
    return Layout(
        tp=tp,
        pp=pp,
        replicas=replicas,
        micro_batches=m,
        micro_batch_size=math.ceil(sequences / m),
        sequences=sequences,
    )


def degrees(req: PlanRequest, setup: Setup, tps: list[int]) -> Iterator[tuple[int, int, int]]:
    """Every (TP, PP, replicas) of the search space, in a fixed order."""
    for t in tps:
        pps = [req.pp] if req.pp is not None else list(range(1, min(setup.layers, setup.count // t) + 1))
        for p in pps:
            if t * p > setup.count:
                continue
            for r in _replica_options(setup, t, p):
                yield (t, p, r)


def layouts(req: PlanRequest, setup: Setup, tps: list[int]) -> Iterator[Layout]:
    """The layouts of a pinned concurrency: every (TP, PP, replicas) with the request's sequences
    spread over the replicas."""
    assert req.concurrency is not None
    for t, p, r in degrees(req, setup, tps):
        yield layout_of(t, p, r, math.ceil(req.concurrency / r))


def inter_node(setup: Setup, tp: int, pp: int, replicas: int) -> list[bool]:
    """For each stage boundary: does any replica's send cross nodes?"""
    per, gpn = tp * pp, setup.gpus_per_node
    # boundary k of replica rho sits after GPU rho·per + (k+1)·tp: it crosses nodes when that is a
    # multiple of the node size; the replicas' offsets modulo the node size decide it for all k
    offsets = {rho * per % gpn for rho in range(min(replicas, gpn))}
    return [(-(k + 1) * tp) % gpn in offsets for k in range(pp - 1)]

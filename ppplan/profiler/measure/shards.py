"""Tensor-parallel shards measured on one GPU: the layer one TP rank runs, built at its own shape.

At TP degree t a rank holds ``heads / t`` query heads, ``max(1, kv_heads / t)`` KV heads (replicated
once t exceeds them), ``intermediate / t`` of the MLP (and of every expert) and the whole hidden
size. Measuring that shard times TP's shape effect (narrower GEMMs, one KV head per GPU) instead of
scaling a TP-1 time; the all-reduces between ranks are not part of it (the cost model adds them from
its measured collective curves).
"""

from __future__ import annotations

import copy
from typing import Any

from ppplan.profiler.measure.errors import MeasureError

__all__ = ["MAX_TP", "parse_tp_degrees", "shard_hf_config"]

MAX_TP = 64
"""largest TP degree a shard is built for"""

#: per-rank sizes split by TP in the transformers configs of the supported architectures
_SPLIT_FIELDS = ("intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size")


def parse_tp_degrees(text: str) -> tuple[int, ...]:
    """``"1,2,4,8"`` → (1, 2, 4, 8), sorted and deduplicated.

    Raises:
        MeasureError: an entry that is not an integer in 1..MAX_TP.
    """
    out = set()
    for part in text.split(","):
        part = part.strip()
        if not part.isascii() or not part.isdigit() or not 1 <= int(part) <= MAX_TP:
            raise MeasureError("tp", part, rule=f"TP degrees are integers in 1..{MAX_TP}, comma-separated")
        out.add(int(part))
    return tuple(sorted(out))


def shard_hf_config(hf: Any, tp: int) -> Any:
    """A copy of transformers config ``hf`` shaped as one of ``tp`` tensor-parallel ranks.

    Raises:
        MeasureError: ``tp`` does not divide the query heads or an MLP size, or the architecture
            has no ``num_attention_heads`` (MLA and others keep their own split: not built here).
    """
    if tp == 1:
        return hf
    heads = getattr(hf, "num_attention_heads", None)
    if not isinstance(heads, int) or heads % tp:
        raise MeasureError("tp", tp, rule=f"must divide the model's {heads} attention heads to build a TP shard")
    cfg = copy.deepcopy(hf)
    kv = getattr(hf, "num_key_value_heads", None) or heads
    # the head dim is the unsharded model's: derived configs would otherwise recompute it from hidden/heads
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // heads
    cfg.head_dim = head_dim
    cfg.num_attention_heads = heads // tp
    cfg.num_key_value_heads = max(1, kv // tp)
    for name in _SPLIT_FIELDS:
        size = getattr(hf, name, None)
        if isinstance(size, int) and size > 0:
            if size % tp:
                raise MeasureError("tp", tp, rule=f"must divide {name} = {size} to build a TP shard")
            setattr(cfg, name, size // tp)
    return cfg

"""One pipeline stage built from the plan's module names: embedding, decoder layers, norm, LM head.

The stage reuses the transformers modules as they are (no re-implementation of attention or MoE):
decoder layers get the model-level rotary embedding's (cos, sin) and a transformers
``DynamicCache`` per micro-batch. Prompts in a batch have equal length, so prefill attention is
causal without a padding mask (SDPA's ``is_causal``) and decode attends to the whole cache.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from transformers import DynamicCache

from ppplan.executor.spec import ExecutorError
from ppplan.executor.weights import materialise
from ppplan.profiler.configs import load_model_config
from ppplan.profiler.hf_compat import cache_kwargs
from ppplan.profiler.models import build_hf_config, build_meta_model, decoder_layers

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "StageLayout",
    "StageRuntime",
    "build_stage",
    "dtype_of",
    "rotary_embedding",
    "stage_layout",
    "tensor_parallelize",
]

_DTYPE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_of(name: str) -> torch.dtype:
    """The torch dtype named ``name`` (float32, bfloat16, float16)."""
    if name not in _DTYPE:
        raise ExecutorError("dtype", rule=f"{name!r} must be one of {', '.join(_DTYPE)}")
    return _DTYPE[name]


@dataclass(frozen=True, slots=True)
class StageLayout:
    """Which parts of the model a stage's module names cover, in execution order."""

    embed: str | None
    """the token embedding's module name when the stage holds it"""
    layers: tuple[int, ...]
    """decoder-layer indices (0-based, contiguous)"""
    layers_prefix: str
    """qualified name of the decoder ModuleList, e.g. 'model.layers'"""
    tail: tuple[str, ...]
    """modules after the last decoder layer (final norm), in plan order"""
    head: str | None
    """the LM head's module name when the stage holds it"""


def stage_layout(model: nn.Module, modules: Sequence[str], num_layers: int) -> StageLayout:
    """Classify a stage's module names (the plan contract) against ``model``.

    Raises:
        ExecutorError: an unknown module, non-contiguous layers, or a part the runtime cannot place.
    """
    layers_prefix, _ = decoder_layers(model, num_layers)
    names = {id(m): n for n, m in model.named_modules()}
    causal_lm = cast("PreTrainedModel", model)  # built by build_meta_model
    emb_name = names[id(causal_lm.get_input_embeddings())]
    head_mod = causal_lm.get_output_embeddings()
    head_name = names[id(head_mod)] if head_mod is not None else None
    known = dict(model.named_modules())
    pat = re.compile(rf"^{re.escape(layers_prefix)}\.(\d+)$")
    embed, head, layers, tail = None, None, [], []
    for m in modules:
        if m not in known:
            raise ExecutorError("plan.stages.modules", rule=f"{m!r} is not a module of {type(model).__name__}")
        hit = pat.match(m)
        if hit:
            layers.append(int(hit.group(1)))
        elif m == emb_name:
            embed = m
        elif m == head_name:
            head = m
        else:
            tail.append(m)
    if layers != list(range(layers[0], layers[-1] + 1)) if layers else False:
        raise ExecutorError("plan.stages.modules", rule=f"decoder layers {layers} are not contiguous and ascending")
    if tail and head is None:
        raise ExecutorError(
            "plan.stages.modules",
            rule=f"{tail} run after the decoder layers but the stage has no LM head "
            f"({head_name!r}); the final norm must share the last stage",
        )
    return StageLayout(embed=embed, layers=tuple(layers), layers_prefix=layers_prefix, tail=tuple(tail), head=head)


def rotary_embedding(model: nn.Module, hf_config: Any, device: torch.device) -> nn.Module:
    """A fresh copy of the model-level rotary embedding on ``device`` (its buffers are not weights).

    Raises:
        ExecutorError: the model has no model-level ``rotary_emb`` (the runtime feeds decoder layers
            their (cos, sin) the way transformers' Llama-family models do).
    """
    for name, mod in model.named_modules():
        if name.endswith("rotary_emb"):
            with torch.device(device):
                return type(mod)(config=hf_config)
    raise ExecutorError(
        "model",
        rule=f"{type(model).__name__} has no model-level rotary_emb; the executor runs Llama-family "
        "decoder layers that take position_embeddings from it",
    )


class StageRuntime:
    """Run one stage's modules on a micro-batch."""

    def __init__(
        self, model: nn.Module, layout: StageLayout, hf_config: Any, device: torch.device, dtype: torch.dtype
    ) -> None:
        mods = dict(model.named_modules())
        self.layout = layout
        self.device = device
        self.dtype = dtype
        self.hf_config = hf_config
        self.embed = mods[layout.embed] if layout.embed else None
        self.layers = [mods[f"{layout.layers_prefix}.{i}"] for i in layout.layers]
        self.tail = [mods[n] for n in layout.tail]
        self.head = mods[layout.head] if layout.head else None
        self.rotary = rotary_embedding(model, hf_config, device)
        self.hidden_size = int(hf_config.hidden_size)

    @property
    def is_first(self) -> bool:
        """The stage takes token ids."""
        return self.embed is not None

    @property
    def is_last(self) -> bool:
        """The stage produces logits."""
        return self.head is not None

    def new_cache(self) -> Any:
        """An empty KV cache for one micro-batch (layer slots indexed by global layer id)."""
        return DynamicCache(config=self.hf_config)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, start: int, cache: Any, *, head: bool = True) -> torch.Tensor:
        """Run the stage.

        Args:
            x: token ids ``[b, n]`` (first stage) or hidden states ``[b, n, hidden]``.
            start: position of the first of the ``n`` tokens (= tokens already cached).
            cache: this micro-batch's cache from :meth:`new_cache`.
            head: on the last stage, compute the logits (False: a prefill chunk that samples nothing
                returns its hidden states).

        Returns:
            Hidden states ``[b, n, hidden]``, or float32 logits of the last position ``[b, vocab]``
            on the last stage.
        """
        h = self.embed(x) if self.embed is not None else x
        n = h.shape[1]
        pos = torch.arange(start, start + n, device=self.device).unsqueeze(0).expand(h.shape[0], -1)
        cos_sin = self.rotary(h, pos)
        mask = None
        if start > 0 and n > 1:
            # a later prefill chunk: SDPA's is_causal aligns the triangle top-left, which would hide
            # the cached prefix from the chunk's first queries; query i sees keys 0..start+i
            keys = torch.arange(start + n, device=self.device)
            mask = (keys[None, :] <= pos[0, :, None]).expand(h.shape[0], 1, n, start + n)
        for layer in self.layers:
            h = layer(
                h,
                attention_mask=mask,
                position_ids=pos,
                use_cache=True,
                position_embeddings=cos_sin,
                **cache_kwargs(layer, cache),
            )
            if isinstance(h, tuple):  # older decoder layers return (hidden, ...)
                h = h[0]
        if self.head is None or not head:
            return h
        for m in self.tail:
            h = m(h)
        return self.head(h[:, -1:, :])[:, 0].float()  # the shapes of transformers' logits_to_keep=1


def build_stage(
    model_name: str,
    modules: Sequence[str],
    *,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    checkpoint: str | None = None,
) -> tuple[StageRuntime, int]:
    """Build ``model_name`` on meta, materialise ``modules`` only, and wrap them as a stage.

    Returns:
        The stage runtime and the bytes of weights it holds.
    """
    hf = build_hf_config(load_model_config(model_name))
    hf._attn_implementation = "sdpa"
    model = build_meta_model(hf)
    model.eval()
    num_layers = int(hf.num_hidden_layers)
    layout = stage_layout(model, modules, num_layers)
    nbytes = materialise(
        model,
        modules,
        seed=seed,
        std=float(getattr(hf, "initializer_range", 0.02)),
        device=device,
        dtype=dtype,
        checkpoint=Path(checkpoint) if checkpoint else None,
    )
    return StageRuntime(model, layout, hf, device, dtype), nbytes


def tensor_parallelize(rt: StageRuntime, tp_mesh: Any) -> list[str]:
    """Shard the stage's decoder layers over ``tp_mesh`` with torch's tensor-parallel API.

    Attention: q/k/v projections column-wise (each rank computes its heads), o_proj row-wise (one
    all-reduce); a dense MLP likewise (gate/up column-wise, down row-wise). Embedding, norms, LM
    head and fused MoE experts stay replicated. Returns notes on what was not sharded.

    Raises:
        ExecutorError: a TP degree that does not divide the attention or KV heads.
    """
    from torch.distributed.tensor.parallel import (  # lazy: DTensor loads only for TP > 1
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    tp = tp_mesh.size()
    cfg = rt.hf_config
    heads = int(cfg.num_attention_heads)
    kv = int(getattr(cfg, "num_key_value_heads", None) or heads)
    if heads % tp or kv % tp:
        raise ExecutorError(
            "degrees.tp",
            rule=f"{tp} must divide the {heads} attention heads and the {kv} KV heads "
            "(the executor shards whole heads; KV-head replication is not implemented)",
        )
    notes: list[str] = []
    for layer in rt.layers:
        plan: dict[str, Any] = {}
        attn = getattr(layer, "self_attn", None)
        if attn is None or not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            raise ExecutorError("degrees.tp", rule=f"{type(layer).__name__} has no q/k/v/o projections to shard")
        plan.update(
            {
                "self_attn.q_proj": ColwiseParallel(),
                "self_attn.k_proj": ColwiseParallel(),
                "self_attn.v_proj": ColwiseParallel(),
                "self_attn.o_proj": RowwiseParallel(),
            }
        )
        mlp = getattr(layer, "mlp", None)
        if mlp is not None and all(
            isinstance(getattr(mlp, n, None), nn.Linear) for n in ("gate_proj", "up_proj", "down_proj")
        ):
            plan.update(
                {
                    "mlp.gate_proj": ColwiseParallel(),
                    "mlp.up_proj": ColwiseParallel(),
                    "mlp.down_proj": RowwiseParallel(),
                }
            )
        elif mlp is not None and not notes:
            notes.append(
                f"{type(mlp).__name__} (fused experts) is replicated on every TP rank: only attention "
                "is tensor-parallel"
            )
        parallelize_module(layer, tp_mesh, plan)
    return notes

"""Build a transformers model on the meta device and cut it into planning units (imports torch).

Parameter counts per unit are read from the real modules, so they are exact for every
architecture transformers knows; no per-family formulas. Only shapes are used: nothing is
allocated and nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import warnings
from typing import Any, cast

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from ppplan.core.dtypes import WEIGHT_DTYPES, linear_weight_bytes
from ppplan.core.spec import ModelSpec, UnitSpec
from ppplan.profiler.configs import ModelConfig, ModelConfigError

__all__ = ["build_hf_config", "build_meta_model", "decoder_layers", "describe_model"]

_KV_PROJ = ("k_proj", "v_proj")


def build_hf_config(cfg: ModelConfig) -> Any:
    """The transformers ``PretrainedConfig`` of ``cfg`` (text part for multimodal configs)."""
    raw = dict(cfg.raw)
    model_type = raw.pop("model_type")
    for key in ("auto_map", "quantization_config", "transformers_version"):
        raw.pop(key, None)
    try:
        hf = AutoConfig.for_model(model_type, **raw)
    except (ValueError, KeyError) as exc:
        if f"{model_type!r}" in str(exc) or "Unrecognized" in str(exc):
            raise ModelConfigError(
                "model",
                cfg.source,
                rule=f"model_type {model_type!r} of {cfg.source!r} is not known to this transformers ({exc})",
            ) from None
        raise ModelConfigError(
            "model", cfg.source, rule=f"transformers rejects {cfg.source!r}: {_first_line(exc)}"
        ) from None
    except Exception as exc:  # transformers' own strict-dataclass validation of config fields
        raise ModelConfigError(
            "model", cfg.source, rule=f"transformers rejects {cfg.source!r}: {_first_line(exc)}"
        ) from None
    text = hf.get_text_config() if hasattr(hf, "get_text_config") else hf
    return text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def build_meta_model(hf_config: Any) -> PreTrainedModel:
    """Instantiate the causal-LM model of ``hf_config`` on the meta device (no memory, no download)."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            try:
                return AutoModelForCausalLM.from_config(hf_config)
            except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as exc:
                raise ModelConfigError(
                    "model", rule=f"transformers cannot build a causal LM from this config ({exc})"
                ) from None


def decoder_layers(model: nn.Module, num_layers: int) -> tuple[str, nn.ModuleList]:
    """The ModuleList holding the ``num_layers`` decoder layers and its qualified name."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == num_layers and name.endswith("layers"):
            return name, mod
    raise ModelConfigError("model", rule=f"found no list of {num_layers} decoder layers in {type(model).__name__}")


def _attr(cfg: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def _layer_attention(cfg: Any, i: int) -> tuple[str, int | None]:
    if _attr(cfg, "kv_lora_rank") is not None:
        return "mla", None
    types = getattr(cfg, "layer_types", None)
    window = _attr(cfg, "sliding_window")
    if types is not None:
        t = types[i]
        if t == "full_attention":
            return "full", None
        if t == "sliding_attention":
            return "sliding", int(window) if window else None
        if t == "chunked_attention":
            return "sliding", int(_attr(cfg, "attention_chunk_size", default=window))
        raise ModelConfigError(
            "model",
            rule=f"layer {i} has type {t!r}; the analytic profile supports full, sliding, chunked and MLA "
            "attention (measure this model with `ppplan profile` instead)",
        )
    if window and getattr(cfg, "use_sliding_window", True) and not getattr(cfg, "max_window_layers", None):
        return "sliding", int(window)
    return "full", None


def _bytes_by_dtype(shape: tuple[int, ...]) -> dict[str, int]:
    return {dt: linear_weight_bytes(shape, dt) for dt in WEIGHT_DTYPES}


def _add(acc: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        acc[k] = acc.get(k, 0) + v


def _signature(cls_name: str, params: list[tuple[str, tuple[int, ...]]], extra: str) -> str:
    text = cls_name + "|" + extra + "|" + ";".join(f"{n}:{s}" for n, s in sorted(params))
    return f"{cls_name}:{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _decoder_unit(cfg: Any, index: int, layer: int, prefix: str, mod: nn.Module) -> UnitSpec:
    hidden = int(cfg.hidden_size)
    n_experts = int(_attr(cfg, "n_routed_experts", "num_local_experts", "num_experts", default=0) or 0)
    top_k = int(_attr(cfg, "num_experts_per_tok", "moe_topk", default=0) or 0)
    weight: dict[str, int] = {}
    expert_w: dict[str, int] = {}
    kv_proj: dict[str, int] = {}
    replicated = 0
    params = expert_params = 0
    ws_dense = ws_expert = 0.0
    shapes: list[tuple[str, tuple[int, ...]]] = []
    for name, p in mod.named_parameters():
        shape = tuple(int(s) for s in p.shape)
        shapes.append((name, shape))
        numel = p.numel()
        params += numel
        parts = name.split(".")
        is_expert = "experts" in parts
        is_router = not is_expert and len(parts) >= 2 and parts[-2] in ("gate", "router") and shape[0] == n_experts
        if p.dim() >= 2 and not is_router:
            b = _bytes_by_dtype(shape)
            _add(weight, b)
            if is_expert:
                expert_params += numel
                _add(expert_w, b)
                per_expert = numel / shape[0]
                ws_expert += per_expert / hidden
            else:
                ws_dense += shape[0]
                if parts[-2] in _KV_PROJ:
                    _add(kv_proj, b)
        else:
            b = {dt: numel * 2 for dt in WEIGHT_DTYPES}
            _add(weight, b)
            replicated += numel * 2
            if is_expert:
                expert_params += numel
                _add(expert_w, b)
            elif parts[-2:-1] and parts[-2] in _KV_PROJ:
                _add(kv_proj, b)
    if expert_params == 0:
        n_experts = top_k = 0
    active = params - expert_params + (expert_params * top_k // n_experts if n_experts else 0)
    attention, window = _layer_attention(cfg, layer)
    heads = int(cfg.num_attention_heads)
    kv_heads = int(_attr(cfg, "num_key_value_heads", default=heads))
    head_dim = int(_attr(cfg, "head_dim", default=hidden // heads))
    if attention == "mla":
        rank, rope = int(cfg.kv_lora_rank), int(cfg.qk_rope_head_dim)
        nope, vdim = int(cfg.qk_nope_head_dim), int(cfg.v_head_dim)
        kv_elems = rank + rope
        # transformers >= 5 caches the compressed latent too (earlier releases cached per-head K/V)
        kv_elems_hf = kv_elems
        pair_prefill = 2 * heads * (nope + rope + vdim)
        pair_decode = 2 * heads * (rank + rope) + 2 * heads * rank
        shardable = False
        kv_heads = 1
    else:
        kv_elems = kv_elems_hf = 2 * kv_heads * head_dim
        pair_prefill = pair_decode = 4 * heads * head_dim
        shardable = True
    ws = ws_dense + ws_expert * (top_k if n_experts else 0) + hidden
    return UnitSpec(
        index=index,
        kind="decoder",
        layer=layer,
        modules=[prefix],
        signature=_signature(type(mod).__name__, shapes, f"{attention}:{window}"),
        params=params,
        active_params=active,
        expert_params=expert_params,
        num_experts=n_experts,
        experts_per_token=top_k,
        weight_bytes=weight,
        expert_weight_bytes=expert_w,
        replicated_bytes=replicated,
        kv_proj_bytes=kv_proj,
        attention=attention,  # type: ignore[arg-type]
        window=window,
        num_heads=heads,
        num_kv_heads=kv_heads,
        kv_elems_per_token=kv_elems,
        kv_elems_per_token_hf=kv_elems_hf,
        kv_tp_shardable=shardable,
        attn_flops_per_pair_prefill=pair_prefill,
        attn_flops_per_pair_decode=pair_decode,
        workspace_elems_per_token=math.ceil(ws),
        tp_allreduces=2,
    )


def describe_model(cfg: ModelConfig) -> ModelSpec:
    """Build ``cfg`` on the meta device and return its planning units with exact parameter counts.

    Units: 0 = token embedding, 1..L = decoder layers, L+1 = final norm + LM head. With tied
    embeddings the head's ``params`` is only the norm (the weight is counted once, in the
    embedding) but its ``weight_bytes`` include the shared matrix: a last stage that is not the
    first must hold its own copy.
    """
    hf = build_hf_config(cfg)
    model = build_meta_model(hf)
    num_layers = int(hf.num_hidden_layers)
    layers_name, layers = decoder_layers(model, num_layers)
    emb = cast(nn.Module, model.get_input_embeddings())
    head = cast(nn.Module | None, model.get_output_embeddings())
    names = {id(m): n for n, m in model.named_modules()}
    emb_name, head_name = names[id(emb)], names[id(head)] if head is not None else None
    emb_weight = cast(torch.Tensor, emb.weight)
    head_weight = cast(torch.Tensor, head.weight) if head is not None else None
    tied = head_weight is not None and head_weight is emb_weight

    def plain(numel: int) -> dict[str, int]:
        return {dt: numel * 2 for dt in WEIGHT_DTYPES}  # embedding/head/norms stay 16-bit

    emb_numel = emb_weight.numel()
    hidden, vocab = int(hf.hidden_size), int(emb_weight.shape[0])
    units: list[UnitSpec] = [
        UnitSpec(
            index=0,
            kind="embed",
            modules=[emb_name],
            signature=f"{type(emb).__name__}:{tuple(emb_weight.shape)}",
            params=emb_numel,
            active_params=0,
            weight_bytes=plain(emb_numel),
            workspace_elems_per_token=hidden,
            tp_allreduces=1,
        )
    ]
    for i, layer in enumerate(layers):
        units.append(_decoder_unit(hf, i + 1, i, f"{layers_name}.{i}", layer))
    # the head unit: every parameter outside embedding and layers (final norm), plus the LM head
    seen = {id(p) for p in emb.parameters()} | {id(p) for p in layers.parameters()}
    head_params = 0
    head_modules: list[str] = []
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        head_params += p.numel()
        mod_name = name.rsplit(".", 1)[0]
        if mod_name not in head_modules and mod_name != head_name:
            head_modules.append(mod_name)
    head_weight_numel = head_weight.numel() if head_weight is not None else 0
    norm_params = head_params - (0 if tied else head_weight_numel)
    head_modules.append(head_name or "lm_head")
    units.append(
        UnitSpec(
            index=num_layers + 1,
            kind="head",
            modules=head_modules,
            signature=f"head:{vocab}x{hidden}:tied={tied}",
            params=head_params,
            active_params=head_params if not tied else head_params + head_weight_numel,
            weight_bytes=plain(norm_params + head_weight_numel),
            replicated_bytes=norm_params * 2,
            workspace_elems_per_token=vocab * 2,  # fp32 logits of a sampled token
            tp_allreduces=0,
        )
    )
    total = sum(u.params for u in units)
    active = sum(u.active_params for u in units[1:-1]) + units[-1].active_params
    heads = int(hf.num_attention_heads)
    notes = []
    if tied:
        notes.append(
            "tied embeddings: the LM head shares the embedding matrix; a last stage other than "
            "the first holds its own copy"
        )
    n_mtp = int(_attr(hf, "num_nextn_predict_layers", default=0) or 0)
    if n_mtp:
        notes.append(
            f"{n_mtp} multi-token-prediction layer(s) of the checkpoint are not planned "
            "(transformers builds none; engines load them only for speculative decoding)"
        )
    return ModelSpec(
        name=cfg.name,
        model_type=cfg.model_type,
        architecture=type(model).__name__,
        config_hash=cfg.config_hash,
        num_layers=num_layers,
        hidden_size=hidden,
        vocab_size=vocab,
        num_attention_heads=heads,
        num_kv_heads=int(_attr(hf, "num_key_value_heads", default=heads)),
        head_dim=int(_attr(hf, "head_dim", default=hidden // heads)),
        tie_word_embeddings=tied,
        max_position_embeddings=_attr(hf, "max_position_embeddings"),
        total_params=total,
        active_params=active,
        units=units,
        notes=notes,
    )

"""Analytic profile: per-unit bytes and FLOPs of a model at chosen weight and KV dtypes.

Model descriptions come from a transformers model built on the meta device (exact parameter
counts). Building imports torch and takes seconds for the largest models, so descriptions are
cached as JSON keyed by config hash and transformers version: the bundled presets ship theirs
(``ppplan/profiler/presets/specs``, checked against a fresh build by the tests), other configs are cached in
the user's cache directory after their first build.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from functools import cache
from importlib import resources
from importlib.metadata import version
from pathlib import Path

from platformdirs import user_cache_dir

from ppplan.core.costmodel import COST_MODEL_VERSION
from ppplan.core.dtypes import KV_DTYPES, QUANTIZATION_NOTES, WEIGHT_DTYPES, element_bytes, unquantized_dtype
from ppplan.core.errors import PpplanError
from ppplan.core.profile import ModelIdentity, Profile, UnitCost
from ppplan.core.spec import ModelSpec
from ppplan.profiler.configs import ModelConfig, load_model_config

__all__ = ["COST_MODEL_VERSION", "analytic_profile", "model_identity", "model_spec", "spec_cache_key"]

#: version of the ModelSpec extraction in ppplan.profiler.models; bump when a unit field changes
SPEC_VERSION = 1


def spec_cache_key(cfg: ModelConfig) -> str:
    """Key of a cached description: config hash, spec version and transformers version."""
    return f"{cfg.config_hash[:20]}-s{SPEC_VERSION}-tf{version('transformers')}"


def _shipped_spec_path(cfg: ModelConfig) -> Path:
    return Path(str(resources.files("ppplan.profiler") / "presets" / "specs")) / f"{cfg.name}.json"


def _user_cache_dir() -> Path:
    env = os.environ.get("PPPLAN_CACHE_DIR")
    if env:
        return Path(env)
    return Path(user_cache_dir("ppplan"))


def _read_spec(path: Path, cfg: ModelConfig) -> ModelSpec | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if data.get("config_hash") != cfg.config_hash or data.get("spec_version") != SPEC_VERSION:
        return None
    try:
        return ModelSpec.model_validate(data["spec"])
    except Exception:  # a stale or hand-edited cache entry is rebuilt, never trusted
        return None


def _describe(cfg: ModelConfig) -> ModelSpec:
    """Build ``cfg`` on the meta device (seconds for the largest models)."""
    from ppplan.profiler.models import describe_model  # lazy: imports torch; planning a preset must not

    return describe_model(cfg)


@cache
def _spec_for(name: str, config_hash: str, model: str) -> ModelSpec:
    cfg = load_model_config(model)
    shipped = _shipped_spec_path(cfg)
    if cfg.source.startswith("preset:") and shipped.is_file():
        spec = _read_spec(shipped, cfg)
        if spec is not None:
            return spec
    cache_path = _user_cache_dir() / "specs" / f"{spec_cache_key(cfg)}.json"
    spec = _read_spec(cache_path, cfg)
    if spec is not None:
        return spec.model_copy(update={"name": cfg.name})
    spec = _describe(cfg)
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {"config_hash": cfg.config_hash, "spec_version": SPEC_VERSION, "spec": spec.model_dump(mode="json")}
            )
        )
        tmp.replace(cache_path)
    except OSError:
        pass  # a read-only cache directory only costs a rebuild next time
    return spec


def model_spec(model: str | ModelConfig) -> ModelSpec:
    """The planning units of a preset name, a config path or a loaded config (cached, see module doc)."""
    cfg = model if isinstance(model, ModelConfig) else load_model_config(model)
    if isinstance(model, ModelConfig) and not cfg.source.startswith("preset:") and not Path(cfg.source).exists():
        return _describe(cfg)
    src = cfg.source.removeprefix("preset:")
    return _spec_for(cfg.name, cfg.config_hash, src)


def model_identity(spec: ModelSpec) -> ModelIdentity:
    """The identity block of a spec, as profiles and plans carry it."""
    return ModelIdentity.model_validate(spec.model_dump(include=set(ModelIdentity.model_fields)))


def analytic_profile(spec: ModelSpec, weight_dtype: str = "bf16", kv_dtype: str = "bf16") -> Profile:
    """Per-unit bytes and FLOPs of ``spec`` with weights in ``weight_dtype`` and KV in ``kv_dtype``.

    FLOPs per token: 2 × active matmul parameters (MoE: shared + top-k experts); attention adds
    ``attn_flops_per_pair_*`` per (query, cached key) pair, applied by the cost model with the
    context length. The LM head's FLOPs are per *sampled* token (prefill samples only the last
    prompt token). Boundary activations are hidden states plus residual (what vLLM sends between
    stages), in the activation dtype.

    Raises:
        PpplanError: unknown weight or KV dtype, naming the field and the allowed values.
    """
    if weight_dtype not in WEIGHT_DTYPES:
        raise PpplanError(
            "weight_dtype", weight_dtype, rule=f"{weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}"
        )
    if kv_dtype not in KV_DTYPES:
        raise PpplanError("kv_dtype", kv_dtype, rule=f"{kv_dtype!r} is not one of {', '.join(KV_DTYPES)}")
    act_dtype = unquantized_dtype(weight_dtype)
    act = int(element_bytes(act_dtype))
    kvb = element_bytes(kv_dtype)
    hidden = spec.hidden_size
    units: list[UnitCost] = []
    for u in spec.units:
        wdt = weight_dtype if u.kind == "decoder" else act_dtype
        if u.kind == "decoder":
            linear_flops = 2 * (u.active_params - u.replicated_bytes // 2)
        elif u.kind == "head":
            linear_flops = 2 * spec.vocab_size * hidden
        else:
            linear_flops = 0
        units.append(
            UnitCost(
                index=u.index,
                kind=u.kind,
                layer=u.layer,
                modules=u.modules,
                signature=u.signature,
                params=u.params,
                active_params=u.active_params,
                weight_bytes=u.weight_bytes[wdt],
                expert_weight_bytes=u.expert_weight_bytes.get(wdt, 0),
                replicated_bytes=u.replicated_bytes,
                kv_proj_bytes=u.kv_proj_bytes.get(wdt, 0),
                num_experts=u.num_experts,
                experts_per_token=u.experts_per_token,
                linear_flops_per_token=max(0, linear_flops),
                attention=u.attention,
                window=u.window,
                num_kv_heads=u.num_kv_heads,
                kv_tp_shardable=u.kv_tp_shardable,
                kv_bytes_per_token=round(u.kv_elems_per_token * kvb),
                kv_bytes_per_token_hf=round(u.kv_elems_per_token_hf * kvb),
                attn_flops_per_pair_prefill=u.attn_flops_per_pair_prefill,
                attn_flops_per_pair_decode=u.attn_flops_per_pair_decode,
                act_bytes_per_token=2 * hidden * act,
                allreduce_bytes_per_token=hidden * act if u.tp_allreduces else 0,
                tp_allreduces=u.tp_allreduces,
                workspace_bytes_per_token=u.workspace_elems_per_token * (4 if u.kind == "head" else act),
            )
        )
    return Profile(
        kind="analytic",
        model=model_identity(spec),
        weight_dtype=weight_dtype,
        kv_dtype=kv_dtype,
        act_dtype=act_dtype,
        quantization=QUANTIZATION_NOTES[weight_dtype],
        units=units,
        provenance={
            "source": "analytic",
            "cost_model": COST_MODEL_VERSION,
            "spec_version": SPEC_VERSION,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "notes": "; ".join(spec.notes) or None,
        },
    )

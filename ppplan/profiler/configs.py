"""Model configs: bundled presets (config.json files, no weights) and local Hugging Face configs.

No torch here: loading and hashing a config is plain JSON. Building the model is
:mod:`ppplan.profiler.models`.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from ppplan.core.errors import PpplanError

__all__ = [
    "ModelConfig",
    "ModelConfigError",
    "PresetInfo",
    "check_config",
    "list_presets",
    "load_model_config",
]


class ModelConfigError(PpplanError):
    """A model name or config file that cannot be used; the message names the field and the rule."""


class PresetInfo(BaseModel):
    """What the preset index says about one bundled config."""

    model_config = ConfigDict(frozen=True, extra="allow")

    name: str
    hf_repo: str | None = None
    published_params: float | None = None
    published_active_params: float | None = None
    published_params_source: str | None = None
    published_checkpoint_dtype: str | None = None
    notes: str | None = None
    source: str | None = None


class ModelConfig(BaseModel):
    """A loaded config: its name, its raw dict and the hash that identifies it."""

    model_config = ConfigDict(frozen=True)

    name: str
    raw: dict[str, Any]
    config_hash: str
    source: str

    @property
    def model_type(self) -> str:
        """The transformers ``model_type`` of this config."""
        return str(self.raw["model_type"])


def _presets_dir() -> Path:
    return Path(str(resources.files("ppplan.profiler") / "presets"))


@cache
def _index() -> dict[str, PresetInfo]:
    path = _presets_dir() / "index.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {
        name: PresetInfo(name=name, **{k: v for k, v in info.items() if k != "name"}) for name, info in data.items()
    }


def list_presets() -> list[PresetInfo]:
    """All bundled presets, sorted by name."""
    names = sorted(p.stem for p in _presets_dir().glob("*.json") if p.name != "index.json")
    idx = _index()
    return [idx.get(n, PresetInfo(name=n)) for n in names]


def config_hash(raw: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of a config dict: sorted keys, no whitespace."""
    return hashlib.sha256(json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


#: fields every decoder config needs, and their largest plausible value
_REQUIRED = {"hidden_size": 1 << 18, "num_hidden_layers": 4096, "num_attention_heads": 4096, "vocab_size": 1 << 24}
#: fields checked when present (None allowed): positive integers up to a plausible bound
_OPTIONAL = {
    "intermediate_size": 1 << 22,
    "num_key_value_heads": 4096,
    "head_dim": 1 << 14,
    "moe_intermediate_size": 1 << 22,
    "kv_lora_rank": 1 << 16,
    "q_lora_rank": 1 << 16,
    "qk_rope_head_dim": 1 << 14,
    "qk_nope_head_dim": 1 << 14,
    "v_head_dim": 1 << 14,
    "n_routed_experts": 1 << 16,
    "num_local_experts": 1 << 16,
    "num_experts": 1 << 16,
    "num_experts_per_tok": 1 << 16,
    "sliding_window": 1 << 26,
    "max_position_embeddings": 1 << 27,
}


def check_config(raw: dict[str, Any], source: str) -> None:
    """Reject configs whose sizes cannot describe a model, naming the field, the value and the rule.

    Multimodal configs are checked on their ``text_config``.

    Raises:
        ModelConfigError: a missing, non-integer, non-positive or implausibly large size, or sizes
            that contradict each other (KV heads not dividing heads, top-k above the expert count).
    """
    cfg = {**raw, **raw["text_config"]} if isinstance(raw.get("text_config"), dict) else raw
    for key, bound in _REQUIRED.items():
        _check_size(cfg, source, key, bound, required=True)
    for key, bound in _OPTIONAL.items():
        _check_size(cfg, source, key, bound, required=False)
    _check_relations(cfg, source)


def _bad(cfg: dict[str, Any], source: str, key: str, rule: str) -> ModelConfigError:
    return ModelConfigError("model", cfg.get(key), rule=f"{key} {cfg.get(key)!r} in {source} {rule}")


def _check_size(cfg: dict[str, Any], source: str, key: str, bound: int, *, required: bool) -> None:
    """``cfg[key]`` is an integer in 1..``bound`` (or absent, when not ``required``)."""
    v = cfg.get(key)
    if v is None:
        if required:
            raise ModelConfigError("model", rule=f"{source} has no {key}; a decoder config needs it")
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise _bad(cfg, source, key, "must be an integer ≥ 1")
    if v > bound:
        raise _bad(cfg, source, key, f"exceeds {bound}, the largest this planner accepts")


def _check_relations(cfg: dict[str, Any], source: str) -> None:
    """Sizes that must agree with each other (run after every size is known to be a positive integer)."""
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    if heads % kv:
        raise _bad(cfg, source, "num_key_value_heads", f"must divide num_attention_heads ({heads})")
    if cfg.get("head_dim") is None and cfg.get("kv_lora_rank") is None and cfg["hidden_size"] % heads:
        raise _bad(
            cfg,
            source,
            "hidden_size",
            f"must be a multiple of num_attention_heads ({heads}) when head_dim is not given",
        )
    experts = cfg.get("n_routed_experts") or cfg.get("num_local_experts") or cfg.get("num_experts")
    top_k = cfg.get("num_experts_per_tok")
    if experts and top_k and top_k > experts:
        raise _bad(cfg, source, "num_experts_per_tok", f"exceeds the {experts} experts")
    dense = cfg.get("first_k_dense_replace")
    if dense is not None and (
        isinstance(dense, bool) or not isinstance(dense, int) or dense < 0 or dense > cfg["num_hidden_layers"]
    ):
        layers = cfg["num_hidden_layers"]
        raise _bad(cfg, source, "first_k_dense_replace", f"must be an integer in 0..num_hidden_layers ({layers})")


def load_model_config(model: str) -> ModelConfig:
    """Load a bundled preset by name (case-insensitive) or a local ``config.json`` (file or folder).

    Raises:
        ModelConfigError: unknown preset, unreadable file, invalid JSON or no ``model_type``.
    """
    if not model or not model.strip():
        raise ModelConfigError("model", rule="must be a preset name or a path to a config.json, got an empty string")
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelConfigError(
                "model", str(path), rule=f"{str(path)!r} is not a readable JSON config ({exc})"
            ) from None
        name = path.parent.name if path.name == "config.json" else path.stem
        source = str(path.resolve())
    else:
        key = model.strip().lower()
        preset = _presets_dir() / f"{key}.json"
        if key == "index" or not preset.is_file():
            known = ", ".join(p.name for p in list_presets())
            raise ModelConfigError(
                "model",
                model,
                rule=f"{model!r} is neither a bundled preset nor an existing config file; presets: {known}",
            )
        raw = json.loads(preset.read_text())
        name, source = key, f"preset:{key}"
    if not isinstance(raw, dict) or not isinstance(raw.get("model_type"), str):
        raise ModelConfigError("model", rule=f"config {source!r} has no string 'model_type' field")
    check_config(raw, source)
    return ModelConfig(name=name, raw=raw, config_hash=config_hash(raw), source=source)


def preset_info(name: str) -> PresetInfo | None:
    """The index entry of a preset, or None for a config that is not a bundled preset."""
    return _index().get(name)

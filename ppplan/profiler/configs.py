"""Model configs: bundled presets (config.json files, no weights) and local Hugging Face configs.

No torch here: loading and hashing a config is plain JSON. Building the model is
:mod:`ppplan.profiler.models`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import unicodedata
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from ppplan.core.errors import PpplanError, shorten
from ppplan.core.text import bad_char
from ppplan.partitioner.request import is_model_path
from ppplan.profiler.files import read_input_text

__all__ = [
    "ModelConfig",
    "ModelConfigError",
    "PresetInfo",
    "check_config",
    "list_presets",
    "load_model_config",
    "preset_info",
    "preset_name",
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


def preset_name(model: str) -> str | None:
    """The bundled preset ``model`` names, or None.

    A preset is named by its name or by its ``hf_repo`` (``meta-llama/Llama-3.1-70B``), compared
    after NFKC normalisation, stripping and case-folding.
    """
    if bad_char(model) is not None:
        return None
    key = unicodedata.normalize("NFKC", model).strip().casefold()
    return _preset_keys().get(key)


@cache
def _preset_keys() -> dict[str, str]:
    """Case-folded preset name or hub id -> preset name."""
    keys = {p.name.casefold(): p.name for p in list_presets()}
    for p in list_presets():
        if p.hf_repo:
            keys.setdefault(p.hf_repo.casefold(), p.name)
    return keys


def _unknown(model: str) -> ModelConfigError:
    """Unknown preset name: the near misses (difflib), and the path spelling when a local file matches."""
    key = unicodedata.normalize("NFKC", model).strip().casefold()
    names = sorted(set(_preset_keys().values()))
    close = difflib.get_close_matches(key, list(_preset_keys()), n=1, cutoff=0.6)
    hint = f"did you mean {_preset_keys()[close[0]]!r}? " if close else ""
    if Path(model.strip()).exists():
        hint += f"to use the local config, write it as a path (./{model.strip()}); "
    return ModelConfigError(
        "model",
        model,
        rule=f"{shorten(model)} is neither a bundled preset nor an existing config file; {hint}presets: "
        f"{', '.join(names)} (a config file is named by a path: it contains '/', starts with '.' or '~', "
        "or ends with '.json')",
    )


INLINE_SOURCE = "inline:"
"""``model_source`` prefix of a config sent in the request (``hf_config``), followed by its hash"""


def config_from_dict(raw: Any, name: str) -> ModelConfig:
    """A config sent in the request body (an uploaded ``config.json``) under the display ``name``.

    Raises:
        ModelConfigError: no string ``model_type`` or a config the planner cannot use.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("model_type"), str):
        raise ModelConfigError("hf_config", rule="must be a config.json object with a string 'model_type'")
    digest = config_hash(raw)
    source = f"{INLINE_SOURCE}{digest[:16]}"
    check_config(raw, source)
    return ModelConfig(name=name, raw=raw, config_hash=digest, source=source)


def load_model_config(model: str) -> ModelConfig:
    """Load a bundled preset or a local ``config.json`` (file or folder).

    Presets resolve first, by name or hub id, case-insensitively (:func:`preset_name`). Anything
    else must be explicitly a path (:func:`ppplan.partitioner.request.is_model_path`): a bare word
    never reads the disk, so a folder ``./llama-3.1-8b`` in the working directory cannot stand in
    for the preset, and a name that is no preset is an error with the nearest preset names. The
    file is read through :func:`~ppplan.profiler.files.read_input_text` (size cap first).

    Raises:
        ModelConfigError: unknown preset, unreadable or oversized file, invalid JSON or no ``model_type``.
    """
    if not model or not model.strip():
        raise ModelConfigError("model", rule="must be a preset name or a path to a config.json, got an empty string")
    preset = preset_name(model)
    if preset is not None:
        raw = json.loads((_presets_dir() / f"{preset}.json").read_text())  # package data, not user input
        name, source = preset, f"preset:{preset}"
    elif is_model_path(model):
        raw, path = _read_config(model.strip())
        name = path.parent.name if path.name == "config.json" else path.stem
        source = str(path.resolve())
    else:
        raise _unknown(model)
    if not isinstance(raw, dict) or not isinstance(raw.get("model_type"), str):
        raise ModelConfigError("model", rule=f"config {source!r} has no string 'model_type' field")
    check_config(raw, source)
    return ModelConfig(name=name, raw=raw, config_hash=config_hash(raw), source=source)


def _read_config(model: str) -> tuple[Any, Path]:
    """The parsed JSON of the config file (or ``folder/config.json``) ``model`` names, and its path."""
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "config.json"
    try:
        text = read_input_text(path, "model")
    except PpplanError as exc:
        raise ModelConfigError(exc.field, exc.value, exc.rule) from None
    try:
        return json.loads(text), path
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, over-long integers, deep nesting
        raise ModelConfigError(
            "model", str(path), rule=f"{str(path)!r} is not a readable JSON config ({type(exc).__name__}: {exc})"
        ) from None


def preset_info(name: str) -> PresetInfo | None:
    """The index entry of a preset, or None for a config that is not a bundled preset."""
    return _index().get(name)

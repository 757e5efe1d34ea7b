"""Model configs: bundled presets (config.json files, no weights) and local Hugging Face configs.

No torch here: loading and hashing a config is plain JSON. Building the model is
:mod:`profiler.models`.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = [
    "ModelConfig",
    "ModelConfigError",
    "PresetInfo",
    "list_presets",
    "load_model_config",
]


class ModelConfigError(ValueError):
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
    return Path(str(resources.files("profiler") / "presets"))


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


def load_model_config(model: str) -> ModelConfig:
    """Load a bundled preset by name (case-insensitive) or a local ``config.json`` (file or folder).

    Raises:
        ModelConfigError: unknown preset, unreadable file, invalid JSON or no ``model_type``.
    """
    if not model or not model.strip():
        raise ModelConfigError("model: must be a preset name or a path to a config.json, got an empty string")
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelConfigError(f"model: {str(path)!r} is not a readable JSON config ({exc})") from None
        name = path.parent.name if path.name == "config.json" else path.stem
        source = str(path.resolve())
    else:
        key = model.strip().lower()
        preset = _presets_dir() / f"{key}.json"
        if key == "index" or not preset.is_file():
            known = ", ".join(p.name for p in list_presets())
            raise ModelConfigError(
                f"model: {model!r} is neither a bundled preset nor an existing config file; presets: {known}"
            )
        raw = json.loads(preset.read_text())
        name, source = key, f"preset:{key}"
    if not isinstance(raw, dict) or not isinstance(raw.get("model_type"), str):
        raise ModelConfigError(f"model: config {source!r} has no string 'model_type' field")
    return ModelConfig(name=name, raw=raw, config_hash=config_hash(raw), source=source)


def preset_info(name: str) -> PresetInfo | None:
    """The index entry of a preset, or None for a config that is not a bundled preset."""
    return _index().get(name)

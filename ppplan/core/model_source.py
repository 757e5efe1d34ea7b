"""Where a model description came from, resolved before planning (plain data, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModelSource"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSource:
    """The identity of a model's source as the engines need it.

    The profiler resolves it (preset index, config file); the partitioner only reads it.
    """

    source: str
    """``preset:NAME`` for a bundled preset, else the config's path as the user gave it."""
    hf_repo: str | None = None
    """The Hugging Face repository the preset mirrors, if any (what an engine is told to load)."""
    published_checkpoint_dtype: str | None = None
    """The dtype the published checkpoint is stored in (``"fp8 (block-wise)"``), if known."""

    @property
    def engine_ref(self) -> str:
        """The model argument for an engine command: the hub id of a preset, else the path."""
        return self.hf_repo or self.source.removeprefix("preset:")

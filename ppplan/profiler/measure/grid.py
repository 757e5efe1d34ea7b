"""The grid of points a unit is measured at: the defaults per device kind and the text format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ppplan.profiler.measure.errors import MeasureError

__all__ = ["CPU_GRIDS", "CUDA_GRIDS", "GRID_ENV", "GridPoint", "ProfileGrid", "parse_grid"]

#: environment variable overriding the grid: "prefill=16,64;batch=1,4;context=64,256"
GRID_ENV = "PPPLAN_PROFILE_GRID"


@dataclass(frozen=True, slots=True, kw_only=True)
class GridPoint:
    """One forward of a unit: a prefill of one sequence, or a decode step of a batch."""

    phase: Literal["prefill", "decode"]
    batch: int
    """sequences in the forward (1 for prefill)"""
    tokens: int
    """new tokens per sequence (1 for decode)"""
    context: int
    """tokens in each sequence's KV cache after the forward's attention (the prompt for prefill)"""

    def describe(self) -> str:
        """``prefill of 64 tokens`` or ``decode batch 4 × context 256``."""
        if self.phase == "prefill":
            return f"prefill of {self.tokens} tokens"
        return f"decode batch {self.batch} × context {self.context}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileGrid:
    """The points a unit is measured at (all token counts, > 0, ascending)."""

    prefill_tokens: tuple[int, ...]
    """prompt lengths of one sequence for prefill, tokens"""
    decode_batches: tuple[int, ...]
    """sequences per decode step (one new token each)"""
    decode_contexts: tuple[int, ...]
    """tokens already in the KV cache of every sequence during decode"""

    def __post_init__(self) -> None:
        for name in ("prefill_tokens", "decode_batches", "decode_contexts"):
            vals = tuple(getattr(self, name))
            if not vals:
                raise MeasureError(f"grid.{name}", rule="needs at least one value, got none")
            bad = [v for v in vals if not isinstance(v, int) or isinstance(v, bool) or v <= 0]
            if bad:
                raise MeasureError(f"grid.{name}", bad[0], rule="every value must be a positive integer")
            object.__setattr__(self, name, tuple(sorted(set(vals))))

    @property
    def points(self) -> int:
        """Grid points per unit (prefill + decode)."""
        return len(self.prefill_tokens) + len(self.decode_batches) * len(self.decode_contexts)

    def prefill_points(self) -> list[GridPoint]:
        """The prefill points, shortest prompt first."""
        return [GridPoint(phase="prefill", batch=1, tokens=n, context=n) for n in self.prefill_tokens]

    def decode_points(self, *, by_context: bool) -> list[GridPoint]:
        """The decode points: every batch of the first context first when ``by_context``, else every
        context of the smallest batch first."""
        if by_context:
            pairs = [(b, c) for c in self.decode_contexts for b in self.decode_batches]
        else:
            pairs = [(b, c) for b in self.decode_batches for c in self.decode_contexts]
        return [GridPoint(phase="decode", batch=b, tokens=1, context=c) for b, c in pairs]

    def describe(self) -> str:
        """``prefill 16,64 · decode batch 1,4 × context 64,256``."""

        def j(xs: tuple[int, ...]) -> str:
            return ",".join(map(str, xs))

        return (
            f"prefill {j(self.prefill_tokens)} · decode batch {j(self.decode_batches)} × "
            f"context {j(self.decode_contexts)}"
        )


#: CUDA grids, finest first; a budget picks the finest that fits (prompt lengths 128…8192,
#: batches 1…256 at several contexts, as vLLM's and vidur's profilers span)
CUDA_GRIDS: tuple[ProfileGrid, ...] = (
    ProfileGrid(
        prefill_tokens=(128, 512, 2048, 8192), decode_batches=(1, 8, 32, 128, 256), decode_contexts=(512, 2048, 8192)
    ),
    # the same without the longest prompt (MLA's math-path scores at 8192 tokens outgrow an 80 GB GPU)
    ProfileGrid(
        prefill_tokens=(128, 512, 2048, 4096), decode_batches=(1, 8, 32, 128, 256), decode_contexts=(512, 2048, 8192)
    ),
    ProfileGrid(prefill_tokens=(128, 1024, 8192), decode_batches=(1, 16, 256), decode_contexts=(1024, 8192)),
    ProfileGrid(prefill_tokens=(128, 2048), decode_batches=(1, 64), decode_contexts=(2048,)),
)
#: CPU grids, finest first: tiny, because a CPU runs an 8B model's layer in tens of milliseconds
CPU_GRIDS: tuple[ProfileGrid, ...] = (
    ProfileGrid(prefill_tokens=(16, 64), decode_batches=(1, 4), decode_contexts=(64, 256)),
    ProfileGrid(prefill_tokens=(16, 64), decode_batches=(1, 4), decode_contexts=(64,)),
    ProfileGrid(prefill_tokens=(16,), decode_batches=(1,), decode_contexts=(64,)),
)

_GRID_KEYS = {"prefill": "prefill_tokens", "batch": "decode_batches", "context": "decode_contexts"}


def parse_grid(text: str) -> ProfileGrid:
    """Parse ``"prefill=16,64;batch=1,4;context=64,256"`` (the ``PPPLAN_PROFILE_GRID`` format).

    Raises:
        MeasureError: an unknown key, a missing key or a value that is not a positive integer.
    """
    vals: dict[str, tuple[int, ...]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        k, sep, v = part.partition("=")
        k = k.strip()
        if not sep or k not in _GRID_KEYS:
            raise MeasureError("grid", part, rule=f"{part!r} is not one of prefill=…, batch=…, context=… (in {text!r})")
        try:
            vals[_GRID_KEYS[k]] = tuple(int(x) for x in v.split(",") if x.strip())
        except ValueError:
            raise MeasureError(f"grid.{_GRID_KEYS[k]}", v, rule="is not a comma-separated list of integers") from None
    missing = [k for k, f in _GRID_KEYS.items() if f not in vals]
    if missing:
        raise MeasureError(
            "grid", text, rule=f"{text!r} lacks {', '.join(missing)} (format prefill=16,64;batch=1,4;context=64)"
        )
    return ProfileGrid(**vals)

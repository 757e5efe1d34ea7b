"""The measured profiler's user error."""

from __future__ import annotations

from ppplan.core.errors import PpplanError

__all__ = ["MeasureError"]


class MeasureError(PpplanError):
    """A measurement that cannot run: unknown device, no CUDA, a grid too large for memory."""

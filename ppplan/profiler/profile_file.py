"""Reading profile files (the pure parsing is :func:`ppplan.core.profile.parse_profile`)."""

from __future__ import annotations

from pathlib import Path

from ppplan.core.errors import PpplanError
from ppplan.core.profile import Profile, ProfileError, parse_profile
from ppplan.profiler.files import read_input_text

__all__ = ["load_profile"]


def load_profile(path: str | Path) -> Profile:
    """Read a profile file through :func:`~ppplan.profiler.files.read_input_text` (size cap first).

    Raises:
        ProfileError: missing, not a regular file, above the size cap, invalid JSON, wrong schema
            version or invalid fields.
    """
    try:
        text = read_input_text(path, "profile")
    except PpplanError as exc:
        raise ProfileError(exc.field, exc.value, exc.rule) from None
    return parse_profile(text, str(path))

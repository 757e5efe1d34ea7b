"""Reading profile files (the pure parsing is :func:`ppplan.core.profile.parse_profile`)."""

from __future__ import annotations

from pathlib import Path

from ppplan.core.profile import Profile, ProfileError, parse_profile

__all__ = ["load_profile"]


def load_profile(path: str | Path) -> Profile:
    """Read a profile file.

    Raises:
        ProfileError: missing file, invalid JSON, wrong schema version or invalid fields.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ProfileError("profile", str(p), rule=f"cannot read {str(p)!r} ({exc.strerror})") from None
    return parse_profile(text, str(p))

"""Measured profiles shipped with ppplan (``ppplan/profiler/data/profiles/MODEL.DTYPE.GPU.json``).

Real measurements taken on the GPU named in each file (see that folder's README); a plan made with
one names it in its provenance. Plan with ``--profile llama-3.1-70b.bf16.H100-SXM-80GB``.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

from ppplan.core.profile import Profile, ProfileError
from ppplan.profiler.profile_file import load_profile

__all__ = ["bundled_profile", "bundled_profiles"]


def _folder() -> Traversable:
    return resources.files("ppplan.profiler") / "data" / "profiles"


def bundled_profiles() -> list[str]:
    """Names of the shipped measured profiles (file names without ``.json``), sorted."""
    return sorted(f.name[: -len(".json")] for f in _folder().iterdir() if f.name.endswith(".json"))


def bundled_profile(name: str) -> Profile:
    """Load the shipped profile ``name`` (as :func:`bundled_profiles` lists it; ``.json`` optional).

    Raises:
        ProfileError: no shipped profile has that name (the message lists them).
    """
    stem = name[: -len(".json")] if name.endswith(".json") else name
    if stem not in bundled_profiles():
        raise ProfileError(
            "profile",
            name,
            rule=f"{name!r} is neither a file, a stored profile id nor a shipped profile "
            f"({', '.join(bundled_profiles())})",
        )
    return load_profile(str(_folder() / f"{stem}.json"))

"""Reading the files a user names (configs, profiles, plans, costs): one size cap, checked first.

A path such as ``/dev/zero`` or a multi-GB file used to be read whole until the OOM killer; every
reader of user files goes through :func:`read_input_text`, which refuses anything that is not a
regular file or is larger than the cap before reading it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ppplan.core.errors import PpplanError

__all__ = ["MAX_INPUT_BYTES", "MAX_INPUT_ENV", "byte_limit_from_env", "max_input_bytes", "read_input_text"]

MAX_INPUT_BYTES = 64 * 1024**2
"""Default cap on one input file, bytes (64 MiB: the largest shipped profile is ~0.2 MiB)."""
MAX_INPUT_ENV = "PPPLAN_MAX_INPUT_BYTES"
"""Environment variable that overrides the cap, in bytes."""


def max_input_bytes() -> int:
    """The cap in force, bytes: ``PPPLAN_MAX_INPUT_BYTES`` or :data:`MAX_INPUT_BYTES`.

    Raises:
        PpplanError: the variable is set to something other than a positive integer.
    """
    return byte_limit_from_env(MAX_INPUT_ENV, MAX_INPUT_BYTES)


def byte_limit_from_env(name: str, default: int) -> int:
    """A size limit in bytes from environment variable ``name``, or ``default`` when it is unset.

    Raises:
        PpplanError: the variable is set to something other than a positive integer.
    """
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise PpplanError(name, raw, rule="must be a positive number of bytes")
    return value


def read_input_text(path: str | Path, field: str, *, limit: int | None = None) -> str:
    """The UTF-8 text of the regular file ``path``, at most ``limit`` bytes (default the cap).

    Args:
        path: the file the user named.
        field: the option or key that named it, for errors (``"profile"``, ``"costs"``).
        limit: the cap in bytes; default :func:`max_input_bytes`.

    Raises:
        PpplanError: missing, not a regular file, larger than the cap, unreadable or not UTF-8.
    """
    cap = max_input_bytes() if limit is None else limit
    p = Path(path).expanduser()
    shown = str(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise PpplanError(field, shown, rule=f"cannot read {shown!r} ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise PpplanError(field, shown, rule=f"{shown!r} is not a regular file")
    if st.st_size > cap:
        raise PpplanError(
            field, shown, rule=f"{shown!r} has {st.st_size:,} bytes, above the {cap:,}-byte limit ({MAX_INPUT_ENV})"
        )
    try:
        with p.open("rb") as fh:
            data = fh.read(cap + 1)  # a file that grows (or whose size the stat misreports) stops here
    except OSError as exc:
        raise PpplanError(field, shown, rule=f"cannot read {shown!r} ({exc.strerror})") from None
    if len(data) > cap:
        raise PpplanError(field, shown, rule=f"{shown!r} is larger than the {cap:,}-byte limit ({MAX_INPUT_ENV})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PpplanError(
            field, shown, rule=f"{shown!r} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None

"""What every ``ppplan`` command shares: the consoles, one-line errors (exit 2), atomic JSON output."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from ppplan.api.errors import USER_ERRORS, describe_error
from ppplan.core.errors import PpplanError

__all__ = ["GIB", "console", "err_console", "fail", "load_profile_arg", "user_errors", "write_json"]

# tables stay readable when piped (rich would fall back to 80 columns)
console = Console() if sys.stdout.isatty() else Console(width=160)
err_console = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=160)
F = TypeVar("F", bound=Callable[..., Any])
GIB = 1024**3


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def user_errors(fn: F) -> F:
    """Turn the known user errors into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            fail(describe_error(exc))
        except OSError as exc:
            fail(f"{exc.filename or 'file'}: {exc.strerror}")
        return None

    return wrapper  # type: ignore[return-value]


def write_json(path: Path, text: str, field: str = "out") -> None:
    """Write ``text`` to ``path`` atomically (no partial file on failure); '-' is stdout.

    Raises:
        ValueError: the file cannot be written, naming the option (``field``) and the path.
    """
    if str(path) == "-":
        sys.stdout.write(text + "\n")
        return
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text + "\n")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PpplanError(field, rule=f"cannot write {str(path)!r} ({exc.strerror})") from None


def load_profile_arg(value: str | None) -> Any:
    if value is None:
        return None
    from ppplan.profiler.profile_file import load_profile

    if Path(value).exists():
        return load_profile(value)
    from ppplan.profiler.bundled import bundled_profile, bundled_profiles

    if value in bundled_profiles() or value.removesuffix(".json") in bundled_profiles():
        return bundled_profile(value)
    try:
        from ppplan.api.store_lookup import find_profile  # provided by the storage layer
    except ImportError:
        from ppplan.core.profile import ProfileError

        raise ProfileError("profile", rule=f"{value!r} is not a file") from None
    return find_profile(value)

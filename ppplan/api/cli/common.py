"""What every ``ppplan`` command shares: the consoles, one-line errors (user errors exit 2, internal
errors exit 1 with the traceback only under ``--debug``), atomic JSON output."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ppplan.api.errors import USER_ERRORS, describe_error
from ppplan.core.errors import PpplanError
from ppplan.core.profile import Profile
from ppplan.profiler.bundled import bundled_profile, bundled_profiles
from ppplan.profiler.profile_file import load_profile

__all__ = [
    "GIB",
    "cli_options",
    "console",
    "err_console",
    "fail",
    "load_profile_arg",
    "report_internal_error",
    "user_errors",
    "write_json",
]

# tables stay readable when piped (rich would fall back to 80 columns)
console = Console() if sys.stdout.isatty() else Console(width=160)
err_console = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=160)
F = TypeVar("F", bound=Callable[..., Any])
GIB = 1024**3


@dataclass(slots=True)
class CliOptions:
    """Options of the root command that change how every command reports."""

    debug: bool = False
    """print the traceback of an internal error instead of one line"""


cli_options = CliOptions()
"""Set by the root command's callback on each invocation."""


def report_internal_error(exc: BaseException) -> None:
    """Report an exception that is not a user error (a bug) on stderr: one line naming it, or with
    ``--debug`` the full traceback."""
    if cli_options.debug:
        traceback.print_exception(exc, file=sys.stderr)
        return
    first = next(iter(str(exc).strip().splitlines()), "")
    err_console.print(
        f"[bold red]error:[/] {escape(f'internal error ({type(exc).__name__}: {first})')}; "
        "rerun with --debug for the traceback",
        highlight=False,
        soft_wrap=True,
    )


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
        PpplanError: the file cannot be written, naming the option (``field``) and the path.
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


def load_profile_arg(value: str | None) -> Profile | None:
    """The profile ``--profile VALUE`` names: a file, a shipped measured profile or a stored id.

    Raises:
        ProfileError: none of those.
    """
    if value is None:
        return None
    if Path(value).exists():
        return load_profile(value)
    if value in bundled_profiles() or value.removesuffix(".json") in bundled_profiles():
        return bundled_profile(value)
    from ppplan.api.store_lookup import find_profile  # lazy: only a stored id needs SQLAlchemy

    return find_profile(value)

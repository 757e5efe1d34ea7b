"""What every ``ppplan`` command shares: the consoles, one-line errors (user errors exit 2, internal
errors exit 1 with the traceback only under ``--debug``), atomic JSON output."""

from __future__ import annotations

import functools
import math
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
    "StdoutClosed",
    "cli_options",
    "console",
    "err_console",
    "fail",
    "load_profile_arg",
    "positive_finite",
    "report_internal_error",
    "user_errors",
    "write_json",
]


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
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class StdoutClosed(Exception):
    """The reader of stdout went away (``ppplan … | head``). Not an ``OSError``, so that click's
    own EPIPE handling (exit status 1, our "internal error") does not catch it before ``main()``."""


class _Console(Console):
    """rich's console, except that a closed pipe ends the command through ``main()`` (quietly, the
    same exit status whichever writer noticed) instead of rich's own exit status 1."""

    def on_broken_pipe(self) -> None:
        raise StdoutClosed()


# tables stay readable when piped (rich would fall back to 80 columns)
console = _Console() if sys.stdout.isatty() else _Console(width=160)
err_console = _Console(stderr=True) if sys.stderr.isatty() else _Console(stderr=True, width=160)


def user_errors(fn: F) -> F:
    """Turn the known user errors, and store faults, into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            fail(describe_error(exc))
        except BrokenPipeError as exc:  # the reader went away (`| head`): main() ends quietly
            raise StdoutClosed() from exc
        except OSError as exc:
            fail(f"{exc.filename or 'file'}: {exc.strerror}")
        except Exception as exc:
            line = _store_fault_line(exc)
            if line is None:
                raise
            fail(line)
        return None

    return wrapper  # type: ignore[return-value]


def _store_fault_line(exc: Exception) -> str | None:
    """One line for a store fault (unreachable, login refused, read-only, no driver) naming the store
    without its password; None for anything else (a bug)."""
    if "sqlalchemy" not in sys.modules:  # no store was touched
        return None
    from ppplan.api.settings import get_settings  # lazy: the CLI starts without SQLAlchemy
    from ppplan.api.store.migrate import store_fault  # lazy: the CLI starts without SQLAlchemy

    fault = store_fault(exc, get_settings().database_url)
    return None if fault is None else describe_error(fault)


def positive_finite(field: str, high: float = math.inf) -> Callable[[float | None], float | None]:
    """A typer option callback: the value must be a finite number in (0, ``high``] (None passes).
    Typer's own ``min``/``max`` let NaN through and have no open bound."""

    def check(value: float | None) -> float | None:
        if value is None:
            return None
        if not (math.isfinite(value) and 0 < value <= high):
            bound = "" if math.isinf(high) else f" and at most {high:g}"
            raise typer.BadParameter(f"{value!r} must be a finite number > 0{bound}")
        return value

    check.__name__ = f"check_{field}"
    return check


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

"""The ``ppplan`` command line (typer + rich). User errors print one line and exit with status 2;
any other exception is a bug: one line naming it and exit status 1 (``ppplan --debug …`` prints the
traceback instead).

Each module of this package holds the commands of one concern on its own ``commands`` app;
:data:`app` combines them here, explicitly, in the order ``ppplan --help`` lists them.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer
from rich.markup import escape
from typer._click.exceptions import ClickException, UsageError  # typer >= 0.27 vendors click

from ppplan.api.cli import calibrate, catalog, partition, plan, profile, run, store
from ppplan.api.cli.common import StdoutClosed, cli_options, err_console, report_internal_error

__all__ = ["app", "main"]

app = typer.Typer(
    name="ppplan",
    help="Stage-partition optimizer for pipeline-parallel LLM inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for _commands in (
    catalog.commands,
    profile.commands,
    calibrate.commands,
    plan.commands,
    partition.commands,
    store.commands,
    run.commands,
):
    app.add_typer(_commands)


EXIT_BROKEN_PIPE = 128 + 13
"""Exit status when the reader of stdout goes away (``ppplan plans export … | head``): what a Unix
tool killed by SIGPIPE reports, without Python's "Broken pipe" message or traceback."""


def _version() -> str:
    try:
        return version("ppplan")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def _print_version(value: bool) -> None:
    if value:
        print(f"ppplan {_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="on an internal error, print its traceback")] = False,
    _show_version: Annotated[
        bool,
        typer.Option("--version", help="print the version and exit", is_eager=True, callback=_print_version),
    ] = False,
) -> None:
    cli_options.debug = debug


def main() -> None:
    """Console-script entry point: usage errors print one line (exit 2), like every other user error;
    an internal error prints one line (exit 1), or its traceback under ``--debug``; a closed stdout
    ends quietly with :data:`EXIT_BROKEN_PIPE`."""
    try:
        code = _main()
        sys.stdout.flush()  # a buffered write to a closed pipe fails here, not at interpreter exit
    except (BrokenPipeError, StdoutClosed):
        # Python's documented practice: point stdout at devnull so the exit-time flush stays quiet
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    sys.exit(code)


def _main() -> int:
    """Run the app; the exit status (user errors 2, internal errors 1)."""
    try:
        rv = app(standalone_mode=False)
    except UsageError as exc:
        hint = ""
        param = getattr(exc, "param", None)
        if param is not None and getattr(param, "name", None):
            hint = f"{param.name}: "
        message = exc.format_message()
        if message.strip():  # no arguments at all: the help was the answer
            err_console.print(f"[bold red]error:[/] {escape(hint + message)}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except ClickException as exc:
        err_console.print(f"[bold red]error:[/] {escape(exc.format_message())}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except typer.Abort:
        return 130
    except (BrokenPipeError, StdoutClosed):
        raise
    except Exception as exc:  # not a user error (those exit 2 inside the commands): a bug
        report_internal_error(exc)
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    main()

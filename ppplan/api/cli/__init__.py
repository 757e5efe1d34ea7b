"""The ``ppplan`` command line (typer + rich). Errors print one line and exit with status 2.

Each module of this package holds the commands of one concern on its own ``commands`` app;
:data:`app` combines them here, explicitly, in the order ``ppplan --help`` lists them.
"""

from __future__ import annotations

import sys

import typer
from typer._click.exceptions import ClickException, UsageError  # typer >= 0.27 vendors click

from ppplan.api.cli import calibrate, catalog, partition, plan, profile, run, store
from ppplan.api.cli.common import err_console

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


def main() -> None:
    """Console-script entry point: usage errors print one line (exit 2), like every other user error."""
    try:
        rv = app(standalone_mode=False)
    except UsageError as exc:
        hint = ""
        param = getattr(exc, "param", None)
        if param is not None and getattr(param, "name", None):
            hint = f"{param.name}: "
        message = exc.format_message()
        if message.strip():  # no arguments at all: the help was the answer
            err_console.print(f"[bold red]error:[/] {hint}{message}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except ClickException as exc:
        err_console.print(f"[bold red]error:[/] {exc.format_message()}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()

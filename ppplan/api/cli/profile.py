"""``ppplan profile``: an analytic or measured profile of a model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ppplan.api.cli.common import err_console, fail, positive_finite, user_errors, write_json
from ppplan.profiler.analytic import analytic_profile, model_spec

__all__ = ["commands"]

commands = typer.Typer()

MAX_BUDGET_S = 86_400.0
"""longest measuring budget the command allows, seconds (a day)"""


@commands.command()
@user_errors
def profile(
    model: Annotated[str, typer.Argument(help="preset name or path to a config.json")],
    analytic: Annotated[bool, typer.Option("--analytic", help="analytic profile (no measurement)")] = False,
    device: Annotated[str | None, typer.Option(help="measure on this device: cpu or cuda")] = None,
    weight_dtype: Annotated[str, typer.Option(help="bf16, fp16, fp8, int8 or int4")] = "bf16",
    kv_dtype: Annotated[str, typer.Option(help="bf16, fp16 or fp8")] = "bf16",
    out: Annotated[Path | None, typer.Option(help="write the profile JSON here (default: stdout)")] = None,
    budget_seconds: Annotated[
        float | None,
        typer.Option(
            help=f"bound a measured run (coarser grid), seconds (at most {MAX_BUDGET_S:g})",
            callback=positive_finite("budget_seconds", MAX_BUDGET_S),
        ),
    ] = None,
    gpu: Annotated[str | None, typer.Option(help="catalog GPU kind the measurement stands for")] = None,
    grid: Annotated[
        str | None, typer.Option(help="measured grid, e.g. 'prefill=128,1024;batch=1,64;context=512'")
    ] = None,
    cpu_threads: Annotated[int | None, typer.Option(help="torch threads when measuring on CPU (1 = steadiest)")] = None,
) -> None:
    """Profile a model per planning unit: analytic (bytes, FLOPs) or measured with torch."""
    if analytic and device:
        fail("--analytic and --device exclude each other: an analytic profile measures nothing")
    if not analytic and not device:
        fail("choose --analytic, or --device cpu|cuda to measure")
    if analytic and (gpu or grid or budget_seconds is not None or cpu_threads is not None):
        fail(
            "--gpu, --grid, --budget-seconds and --cpu-threads apply to a measured profile (--device), "
            "not to --analytic"
        )
    if cpu_threads is not None and not 1 <= cpu_threads <= max(1, 4 * (os.cpu_count() or 1)):
        fail(
            f"cpu_threads: {cpu_threads} is outside 1..{max(1, 4 * (os.cpu_count() or 1))} "
            f"(this host has {os.cpu_count()} CPUs)"
        )
    if analytic:
        prof = analytic_profile(model_spec(model), weight_dtype, kv_dtype)
    else:
        from ppplan.profiler.measure import run_profile_cli  # lazy: imports torch; the CLI must start without it

        prof = run_profile_cli(
            model=model,
            device=device or "cpu",
            weight_dtype=weight_dtype,
            kv_dtype=kv_dtype,
            budget_seconds=budget_seconds,
            gpu=gpu,
            console=err_console,
            grid=grid,
            cpu_threads=cpu_threads,
        )
    write_json(out or Path("-"), prof.to_json())
    if out:
        err_console.print(f"wrote {out} ({prof.label}, {len(prof.units)} units)")

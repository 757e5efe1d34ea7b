"""``ppplan profile``: an analytic or measured profile of a model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ppplan.api.cli.common import err_console, fail, positive_finite, user_errors, write_json
from ppplan.core.profile import Profile
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
    tp: Annotated[
        str,
        typer.Option(help="measure the TP shard of each degree, e.g. 1,2,4,8 (one profile per degree: OUT.tpN.json)"),
    ] = "1",
    cuda_graphs: Annotated[
        bool,
        typer.Option(
            "--cuda-graphs/--eager",
            help="time decode as CUDA-graph replays, as engines run it (CUDA only; CPU measures eagerly)",
        ),
    ] = True,
) -> None:
    """Profile a model per planning unit: analytic (bytes, FLOPs) or measured with torch."""
    if analytic and device:
        fail("--analytic and --device exclude each other: an analytic profile measures nothing")
    if not analytic and not device:
        fail("choose --analytic, or --device cpu|cuda to measure")
    if analytic and (gpu or grid or budget_seconds is not None or cpu_threads is not None or tp != "1"):
        fail(
            "--gpu, --grid, --budget-seconds, --cpu-threads and --tp apply to a measured profile (--device), "
            "not to --analytic"
        )
    if cpu_threads is not None and not 1 <= cpu_threads <= max(1, 4 * (os.cpu_count() or 1)):
        fail(
            f"cpu_threads: {cpu_threads} is outside 1..{max(1, 4 * (os.cpu_count() or 1))} "
            f"(this host has {os.cpu_count()} CPUs)"
        )
    if analytic:
        _write(analytic_profile(model_spec(model), weight_dtype, kv_dtype), out)
        return
    from ppplan.profiler.measure import run_profile_cli  # lazy: imports torch; the CLI must start without it
    from ppplan.profiler.measure.shards import parse_tp_degrees  # lazy: with the measuring code

    degrees = parse_tp_degrees(tp)
    if len(degrees) > 1 and out is None:
        fail("tp: several degrees write one profile each; give --out FILE (written as FILE.tpN.json)")
    for t in degrees:
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
            tp=t,
            cuda_graphs=cuda_graphs,
        )
        dest = out if out is None or len(degrees) == 1 else out.with_name(f"{out.stem}.tp{t}{out.suffix or '.json'}")
        _write(prof, dest)


def _write(prof: Profile, out: Path | None) -> None:
    write_json(out or Path("-"), prof.to_json())
    if out:
        err_console.print(f"wrote {out} ({prof.label}, {len(prof.units)} units)")

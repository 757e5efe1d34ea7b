"""``ppplan calibrate``: fit the analytic model's efficiency factors from a measured profile.

Thin: the fitting is :func:`profiler.calibrate.fit_efficiency`; this only reads and writes files.
:mod:`ppplan.api.cli` adds :data:`commands` to the root app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ppplan.api.cli.common import console, err_console, fail, user_errors, write_json
from ppplan.core.gpus import get_gpu
from ppplan.core.profile import ProfileError
from ppplan.profiler.analytic import analytic_profile, model_spec
from ppplan.profiler.calibrate import apply_calibration, fit_efficiency, points_from_profile
from ppplan.profiler.profile_file import load_profile

__all__ = ["calibrate", "commands"]

commands = typer.Typer()


@commands.command()
@user_errors
def calibrate(
    profile_file: Annotated[
        Path | None, typer.Argument(help="measured profile JSON (from `ppplan profile --device`)")
    ] = None,
    from_measurements: Annotated[
        str | None,
        typer.Option(help="fit from the executor measurements stored for this plan id (`ppplan run PLAN_ID`)"),
    ] = None,
    run_id: Annotated[str | None, typer.Option(help="with --from-measurements: only this run's rows")] = None,
    gpu: Annotated[str | None, typer.Option(help="catalog GPU kind to fit (default: the profile's device)")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="write the analytic profile of this model (same dtypes) carrying the fit, instead of the "
            "measured profile"
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="write the calibrated profile here (default: stdout)")] = None,
) -> None:
    """Fit compute/memory efficiency and overhead for a GPU kind; report the fit error per phase.

    From a measured profile (PROFILE_FILE) or from a stored plan's executor measurements
    (--from-measurements PLAN_ID, which stores the calibrated profile and prints its id).
    """
    if from_measurements is not None:
        if profile_file is not None:
            fail("give either PROFILE_FILE or --from-measurements PLAN_ID, not both")
        _from_measurements(from_measurements, run_id, model, out)
        return
    if profile_file is None:
        fail("give a measured PROFILE_FILE or --from-measurements PLAN_ID")
        return
    if run_id is not None:
        fail("run_id: applies to --from-measurements only")

    prof = load_profile(profile_file)
    if prof.kind != "measured" or not prof.device:
        raise ProfileError(
            "profile",
            rule=f"{str(profile_file)!r} is {prof.kind} ({prof.label}); calibrate needs a "
            "measured profile (`ppplan profile MODEL --device cpu|cuda --out FILE`)",
        )
    kind = get_gpu(gpu, field="gpu").name if gpu else prof.device
    if kind != prof.device:
        raise ProfileError(
            "gpu",
            rule=f"{kind!r} differs from the device {prof.device!r} the profile was measured on; "
            "a fit is only valid for the GPU kind that produced the times",
        )
    eff = fit_efficiency(prof, kind, points_from_profile(prof), source=f"ppplan calibrate {prof.label}")
    target = prof
    if model is not None:
        target = analytic_profile(model_spec(model), prof.weight_dtype, prof.kv_dtype)
    result = apply_calibration(target, kind, eff)
    t = Table(title=f"calibration of {kind} from {prof.label} ({eff.points} points)")
    for c in (
        "η compute",
        "η memory",
        "overhead µs",
        "ω overlap",
        "median err prefill",
        "median err decode",
        "median err all",
    ):
        t.add_column(c, justify="right")
    fe = eff.fit_error
    pct = lambda k: f"{fe[k]:.1%}" if k in fe else "-"  # noqa: E731
    t.add_row(
        f"{eff.compute:.4f}",
        f"{eff.memory:.4f}",
        f"{eff.overhead_s * 1e6:.1f}",
        f"{eff.overlap:.2f}",
        pct("prefill"),
        pct("decode"),
        pct("all"),
    )
    (err_console if out is None else console).print(t)
    write_json(out or Path("-"), result.to_json())
    if out:
        err_console.print(f"wrote {out} ({result.label}, calibration[{kind}])")


def _from_measurements(plan_id: str, run_id: str | None, model: str | None, out: Path | None) -> None:
    """``ppplan calibrate --from-measurements PLAN_ID``: fit the plan's GPU kind from stored stage times."""
    from ppplan.api.run_store import calibrate_from_measurements  # lazy: the CLI starts without SQLAlchemy

    prof, eff, summary = calibrate_from_measurements(plan_id, run_id=run_id, save=True)
    gpu = str(summary["gpu"])
    if model is not None:
        prof = apply_calibration(analytic_profile(model_spec(model), prof.weight_dtype, prof.kv_dtype), gpu, eff)
    fe = eff.fit_error
    t = Table(title=f"calibration of {gpu} from plan {plan_id} ({summary['rows']} stored rows, {eff.points} points)")
    for c in ("η compute", "η memory", "overhead µs", "ω overlap", "median err prefill", "median err decode"):
        t.add_column(c, justify="right")
    t.add_row(
        f"{eff.compute:.4f}",
        f"{eff.memory:.4f}",
        f"{eff.overhead_s * 1e6:.1f}",
        f"{eff.overlap:.2f}",
        f"{fe['prefill']:.1%}" if "prefill" in fe else "-",
        f"{fe['decode']:.1%}" if "decode" in fe else "-",
    )
    err_console.print(t)
    if summary.get("profile_id"):
        err_console.print(
            f"stored calibrated profile {summary['profile_id']}: replan with "
            f"`ppplan plan ... --profile {summary['profile_id']}`"
        )
    if out is not None:
        write_json(out, prof.to_json())
        err_console.print(f"wrote {out} ({prof.label}, calibration[{gpu}])")

"""Executor measurements → calibration points → the profile used for planning.

The store keeps stage times, the fit (:func:`profiler.calibrate.fit_efficiency`) wants unit times:
a stage's measured step is split over its units in proportion to the analytic times of those units
(TP 1, the step's tokens and context). The split is refined by fixed-point iteration
(:data:`SPLIT_ROUNDS`): split with the current fit's unit times, fit again. The first split uses
the uncalibrated shares, where an embedding lookup costs next to nothing; on hosts where a fixed
per-forward overhead dominates (CPU ranks) the fit then learns that overhead and the next split
gives the embedding its share. The fit learns from how stages of different unit mixes (embedding,
decoder layers, head) and the two phases deviate from the prediction.

Phases: a prefill row's step is one forward of ``micro_batch_size`` prompts of
``tokens / micro_batch_size`` tokens (a batched point: b prompts' compute and memory time, one fixed
overhead); a decode row's step is one token for each of ``micro_batch_size`` sequences with the
cache holding the prompt plus, on average, half the plan's output tokens.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ppplan.core.costmodel import CostModel
from ppplan.core.gpus import get_gpu
from ppplan.core.profile import Efficiency
from ppplan.executor.run import model_name_of
from ppplan.executor.spec import ExecutorError
from ppplan.profiler.analytic import analytic_profile, model_spec
from ppplan.profiler.calibrate import CalibrationPoint, apply_calibration, fit_efficiency

__all__ = [
    "SPLIT_ROUNDS",
    "START_OVERHEADS",
    "calibrate_rows",
    "check_measured_device",
    "fit_stage_measurements",
    "points_from_rows",
    "predict_stage_seconds",
    "profile_for_plan",
    "stage_log_error",
]

#: fit → re-split rounds of :func:`fit_stage_measurements`
SPLIT_ROUNDS = 6
#: starting per-unit overheads, as fractions of the smallest measured time per unit
START_OVERHEADS = (0.0, 0.5, 0.9)


def check_measured_device(plan_gpu: str, device: str | None, device_name: str | None = None) -> None:
    """Refuse to fit ``plan_gpu`` from times measured on another kind of device.

    Args:
        plan_gpu: the plan's catalog GPU kind (the kind the fit would be stored for).
        device: the torch device the ranks ran on ('cpu', 'cuda', 'cuda:N'); None: unknown (rows
            stored before devices were recorded), not checked.
        device_name: the CUDA device's name (``NVIDIA H100 80GB HBM3``) when known.

    Raises:
        ExecutorError: CPU times for a GPU kind, GPU times for the CPU pseudo-device, or a CUDA device
            whose name resolves to another catalog kind.
    """
    if device is None:
        return
    kind = get_gpu(plan_gpu).name
    measured = "CPU" if device.startswith("cpu") else None
    if measured is None and device_name:
        from ppplan.profiler.measure.device import resolve_cuda_gpu  # lazy: the device module imports torch

        measured = resolve_cuda_gpu(device_name).name
    on_gpu = not device.startswith("cpu")
    if (kind == "CPU") == on_gpu or (measured is not None and measured != kind):
        what = measured or device
        raise ExecutorError(
            "calibrate",
            rule=f"the times were measured on {what}, not on the plan's {kind}: a fit is stored per GPU "
            f"kind, so it must come from that kind (plan for {what} and run that plan to calibrate it)",
        )


def profile_for_plan(plan: Mapping[str, Any]) -> Any:
    """The analytic profile of the plan's model at the plan's dtypes."""
    return analytic_profile(model_spec(model_name_of(dict(plan))), plan["weight_dtype"], plan["kv_dtype"])


def _run_shapes(rows: list[Mapping[str, Any]], plan: Mapping[str, Any]) -> dict[str | None, tuple[int, int]]:
    """(prompt tokens, decode context) per run id, from its prefill rows."""
    out: dict[str | None, tuple[int, int]] = {}
    half_out = int(plan["workload"]["output_tokens"]) // 2
    for r in rows:
        if r["phase"] == "prefill":
            P = max(1, int(r["tokens"]) // int(r["micro_batch_size"]))
            out[r.get("run_id")] = (P, P + half_out)
    return out


def _stage_units(plan: Mapping[str, Any]) -> list[range]:
    return [range(s["units"][0], s["units"][1] + 1) for s in plan["stages"]]


def points_from_rows(plan: Mapping[str, Any], rows: Iterable[Mapping[str, Any]], profile: Any) -> list[Any]:
    """Calibration points (per unit) from stored stage rows of ``plan`` (see the module docstring)."""
    rows = list(rows)
    if not rows:
        raise ExecutorError(
            "measurements", rule="the plan has no stored measurements (run it with `ppplan run PLAN_ID`)"
        )
    if plan["degrees"]["tp"] != 1:
        raise ExecutorError("degrees.tp", rule=f"{plan['degrees']['tp']}; calibration points are TP-1 unit times")
    shapes = _run_shapes(rows, plan)
    cm = CostModel(profile, get_gpu(plan["cluster"]["gpu"]))
    units = _stage_units(plan)
    pts = []
    for r in rows:
        tokens, context, seconds, batch = _row_shape(plan, rows, r, shapes)
        if seconds <= 0:
            continue
        t = _batched(cm, r["phase"], tokens, context, batch)
        us = units[int(r["stage"])]
        total = float(sum(t[u] for u in us))
        for u in us:
            pts.append(
                CalibrationPoint(
                    unit=u,
                    phase=r["phase"],
                    tokens=tokens,
                    context=context,
                    seconds=seconds * float(t[u]) / total,
                    batch=batch,
                )
            )
    return pts


def _batched(cm: Any, phase: str, tokens: int, context: int, batch: int) -> Any:
    """Unit seconds of one forward of ``batch`` identical prefills (one overhead), or one decode step."""
    t = cm.unit_times(1, phase, tokens, context)
    if phase != "prefill" or batch == 1:
        return t
    over = cm.unit_overhead
    return (t - over) * batch + over


def predict_stage_seconds(
    plan: Mapping[str, Any], profile: Any, *, phase: str, tokens: int, context: int, batch: int = 1
) -> list[float]:
    """Seconds the (calibrated) cost model predicts for one step of each stage of ``plan``.

    prefill: ``batch`` prompts of ``tokens`` tokens; decode: ``tokens`` sequences at ``context``.
    """
    cm = CostModel(profile, get_gpu(plan["cluster"]["gpu"]))
    t = _batched(cm, phase, tokens, context, batch if phase == "prefill" else 1)
    return [float(sum(t[u] for u in us)) for us in _stage_units(plan)]


def _row_shape(
    plan: Mapping[str, Any],
    rows: list[Mapping[str, Any]],
    r: Mapping[str, Any],
    shapes: dict[str | None, tuple[int, int]],
) -> tuple[int, int, float, int]:
    """(tokens, context, seconds, batch) of one row in the cost model's units (prefill: prompt
    tokens per sequence, with the batch of prompts the step held)."""
    b = int(r["micro_batch_size"])
    P, ctx = shapes.get(r.get("run_id"), (int(plan["workload"]["prompt_tokens"]),) * 2)
    if r["phase"] == "prefill":
        return P, P, float(r["compute_s"]), b
    return b, ctx, float(r["compute_s"]), 1


def stage_log_error(plan: Mapping[str, Any], rows: Iterable[Mapping[str, Any]], profile: Any) -> float:
    """Mean squared log error of ``profile``'s stage times against the rows (the fit's own measure)."""
    rows = list(rows)
    shapes = _run_shapes(rows, plan)
    total = 0.0
    for r in rows:
        tokens, context, seconds, batch = _row_shape(plan, rows, r, shapes)
        pred = predict_stage_seconds(plan, profile, phase=r["phase"], tokens=tokens, context=context, batch=batch)[
            int(r["stage"])
        ]
        total += (math.log(pred) - math.log(seconds)) ** 2
    return total / max(1, len(rows))


def fit_stage_measurements(
    plan: Mapping[str, Any], rows: Iterable[Mapping[str, Any]], base: Any, *, source: str
) -> tuple[Any, Any, int]:
    """Fit the plan's GPU kind to stage rows (see the module docstring).

    The split → fit iteration starts from several per-unit overheads (:data:`START_OVERHEADS` of
    the smallest measured time per unit) and keeps the fit whose stage times match the rows best:
    a start without overhead cannot learn an overhead-dominated host (the fit bounds the overhead by
    the smallest point, which the first split makes an embedding's tiny share).

    Returns:
        (calibrated profile, Efficiency, number of unit points).
    """
    rows = [r for r in rows if float(r["compute_s"]) > 0]
    if not rows:
        raise ExecutorError("measurements", rule="no row has a positive compute time to fit")
    gpu = plan["cluster"]["gpu"]
    units = _stage_units(plan)
    shapes = _run_shapes(rows, plan)
    per_unit = min(_row_shape(plan, rows, r, shapes)[2] / len(units[int(r["stage"])]) for r in rows)
    # (a prefill row's time covers its whole batch: per unit it bounds the overhead from above too)
    best: tuple[float, Any, Any, int] | None = None
    for frac in START_OVERHEADS:
        start = Efficiency(compute=0.6, memory=0.8, overhead_s=per_unit * frac, source="start")
        current = apply_calibration(base, gpu, start) if frac > 0 else base
        for _ in range(SPLIT_ROUNDS):
            pts = points_from_rows(plan, rows, current)
            eff = fit_efficiency(base, gpu, pts, source=source)
            current = apply_calibration(base, gpu, eff)
        err = stage_log_error(plan, rows, current)
        if best is None or err < best[0]:
            best = (err, current, eff, len(pts))
    if best is None:
        raise ExecutorError("measurements", rule="nothing to fit")
    return best[1], best[2], best[3]


def calibrate_rows(
    plan: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    plan_id: str,
    run_id: str | None = None,
    device_name: str | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Fit the plan's GPU kind from measurement rows of one stored plan (no store access here).

    Rows that carry a ``device`` (the torch device of the run) must come from the plan's GPU kind
    (:func:`check_measured_device`; ``device_name``: the CUDA device's name when known).

    Returns:
        (calibrated analytic profile, fitted Efficiency, summary of what was fitted).

    Raises:
        ExecutorError: no rows, a TP > 1 plan, nothing to fit, rows measured on another device kind.
    """
    base = profile_for_plan(plan)
    gpu = plan["cluster"]["gpu"]
    for dev in sorted({str(r["device"]) for r in rows if r.get("device")}):
        check_measured_device(gpu, dev, device_name)
    if not rows:
        raise ExecutorError(
            "measurements", rule=f"plan {plan_id!r} has no stored measurements (run it with `ppplan run PLAN_ID`)"
        )
    prof, eff, npts = fit_stage_measurements(
        plan,
        rows,
        base,
        source=f"executor measurements of plan {plan_id}" + (f" run {run_id}" if run_id else f" ({len(rows)} rows)"),
    )
    summary: dict[str, Any] = {
        "plan_id": plan_id,
        "gpu": gpu,
        "rows": len(rows),
        "points": npts,
        "efficiency": eff.model_dump(),
        "profile_label": prof.label,
    }
    by_run: dict[Any, int] = defaultdict(int)
    for r in rows:
        by_run[r.get("run_id")] += 1
    summary["runs"] = len(by_run)
    return prof, eff, summary

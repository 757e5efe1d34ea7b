"""A measured run: pick the grid, measure every distinct unit, assemble the measured Profile.

:func:`run_profile_cli` is what ``ppplan profile --device`` calls: the run with a progress bar and a
summary line.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Literal

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ppplan.core.dtypes import element_bytes
from ppplan.core.profile import Profile, UnitCost
from ppplan.core.spec import ModelSpec
from ppplan.profiler.analytic import COST_MODEL_VERSION, SPEC_VERSION, analytic_profile, model_spec
from ppplan.profiler.configs import ModelConfig, load_model_config
from ppplan.profiler.measure.decoder import measure_decoder
from ppplan.profiler.measure.device import (
    TIMED_STEPS_CPU,
    TIMED_STEPS_CUDA,
    WARMUP_STEPS_CPU,
    WARMUP_STEPS_CUDA,
    Device,
    Timer,
    free_bytes,
    resolve_device,
)
from ppplan.profiler.measure.errors import MeasureError
from ppplan.profiler.measure.grid import CPU_GRIDS, CUDA_GRIDS, GRID_ENV, ProfileGrid, parse_grid
from ppplan.profiler.measure.memory import check_memory, estimate_seconds, grids_that_fit
from ppplan.profiler.measure.shards import shard_hf_config
from ppplan.profiler.measure.units import SEED, UnitContext, UnitMeasurement, measure_edge, rotary_of

__all__ = ["iter_points", "run_profile", "run_profile_cli"]

_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _progress(console: Any | None) -> Any:
    if console is None:
        return contextlib.nullcontext(None)
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class _Measured:
    """What measuring the distinct units gave."""

    by_signature: dict[str, UnitMeasurement]
    skipped: int
    """grid points left out to stay within the budget, summed over the distinct units"""
    elapsed_s: float


def _measure_one(
    ctx: UnitContext, u: UnitCost, grid: ProfileGrid, points_left: Callable[[], bool], tick: Callable[[float], None]
) -> UnitMeasurement:
    t0 = time.perf_counter()
    run = measure_decoder if u.kind == "decoder" else measure_edge
    try:
        m = run(ctx, u, grid, points_left, tick)
    except torch.cuda.OutOfMemoryError as exc:
        raise MeasureError(
            "grid",
            rule=f"unit {u.index} ran out of device memory ({str(exc).splitlines()[0]}); "
            f"use a smaller grid ({GRID_ENV})",
        ) from None
    m.seconds = time.perf_counter() - t0
    return m


def _measure_all(
    ctx: UnitContext,
    distinct: list[UnitCost],
    chosen: ProfileGrid,
    estimate: float,
    budget_seconds: float | None,
    console: Any | None,
) -> _Measured:
    start = time.perf_counter()
    skipped = 0

    def points_left() -> bool:
        return budget_seconds is None or time.perf_counter() - start < budget_seconds

    results: dict[str, UnitMeasurement] = {}
    with _progress(console) as prog, torch.inference_mode():
        task = prog.add_task("profile", total=max(estimate, 1e-3)) if prog is not None else None

        def tick(sec: float) -> None:
            if prog is not None:
                prog.advance(task, sec)

        for k, u in enumerate(distinct):
            if prog is not None:
                prog.update(task, description=f"unit {u.index} {u.kind} ({k + 1}/{len(distinct)} distinct)")
            m = _measure_one(ctx, u, chosen, points_left, tick)
            skipped += chosen.points - len({(p.phase, p.tokens, p.context) for p in m.points})
            results[u.signature] = m
            if ctx.dev.cuda:
                torch.cuda.empty_cache()
        if prog is not None:
            prog.update(task, completed=prog.tasks[0].total, description="profile done")
    return _Measured(by_signature=results, skipped=skipped, elapsed_s=time.perf_counter() - start)


@dataclass(frozen=True, slots=True, kw_only=True)
class _GridChoice:
    grid: ProfileGrid
    estimate_s: float
    """estimated wall time of measuring the distinct units on ``grid``, seconds"""


def _choose_grid(
    grid: ProfileGrid | None,
    distinct: list[UnitCost],
    base: Profile,
    spec: ModelSpec,
    timer: Timer,
    dtype_bytes: int,
    budget_seconds: float | None,
) -> _GridChoice:
    """``grid`` when given (or ``PPPLAN_PROFILE_GRID``), else the finest default grid of the device
    that its memory holds and whose estimate fits ``budget_seconds`` (the coarsest when none does)."""
    dev = timer.dev
    env_grid = os.environ.get(GRID_ENV)
    if grid is None and env_grid:
        grid = parse_grid(env_grid)
    candidates = [grid] if grid is not None else list(CUDA_GRIDS if dev.cuda else CPU_GRIDS)
    if len(candidates) > 1:  # a default grid: drop those the device's memory cannot hold
        candidates = grids_that_fit(candidates, distinct, spec, dev, dtype_bytes, free_bytes(dev))
    chosen = candidates[-1]
    estimate = 0.0
    for g in candidates:
        estimate = estimate_seconds(distinct, base, g, dev, timer.warmup, timer.timed)
        chosen = g
        if budget_seconds is None or estimate <= budget_seconds:
            break
    return _GridChoice(grid=chosen, estimate_s=estimate)


def _provenance(
    base: Profile,
    hf: Any,
    dev: Device,
    timer: Timer,
    chosen: ProfileGrid,
    measured: _Measured,
    *,
    weight_dtype: str,
    kv_dtype: str,
    threads: int,
    distinct: int,
    budget_seconds: float | None,
) -> dict[str, Any]:
    per_unit = [measured.by_signature[u.signature] for u in base.units]
    prov = dict(base.provenance)
    prov.update(
        {
            "source": "measured",
            # each kernel launched from Python: engines replay decode from CUDA graphs, so the cost
            # model prefers its engine-realistic kernel times over these where it has them
            "timing": "eager",
            "cost_model": COST_MODEL_VERSION,
            "spec_version": SPEC_VERSION,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "device_name": dev.name,
            "torch": torch.__version__,
            "cuda": torch.version.cuda if dev.cuda else None,
            "transformers": version("transformers"),
            "dtype": weight_dtype,
            "kv_dtype": kv_dtype,
            "attn_implementation": str(getattr(hf, "_attn_implementation", None)),
            "grid": chosen.describe(),
            "grid_prefill_tokens": list(chosen.prefill_tokens),
            "grid_decode_batches": list(chosen.decode_batches),
            "grid_decode_contexts": list(chosen.decode_contexts),
            "warmup_steps": timer.warmup,
            "timed_steps": timer.timed,
            "seed": SEED,
            "cpu_threads": None if dev.cuda else threads,
            "distinct_units": distinct,
            "units": len(base.units),
            "points_skipped_for_budget": measured.skipped,
            "budget_seconds": budget_seconds,
            "profile_seconds": round(measured.elapsed_s, 3),
            "measured_weight_bytes": [m.weight_bytes for m in per_unit],
            "measured_kv_bytes_per_token": [m.kv_bytes_per_token for m in per_unit],
            "measured_act_bytes_per_token": [m.act_bytes_per_token for m in per_unit],
            "kv_layout": ",".join(sorted({m.kv_layout for m in per_unit if m.kv_layout != "none"})) or None,
        }
    )
    return prov


def _distinct_units(units: list[UnitCost]) -> list[UnitCost]:
    """The first unit of every signature, in unit order (units with one signature measure alike)."""
    reps: dict[str, UnitCost] = {}
    for u in units:
        reps.setdefault(u.signature, u)
    return list(reps.values())


def _check_dtype_and_budget(weight_dtype: str, budget_seconds: float | None) -> None:
    if weight_dtype not in _TORCH_DTYPES:
        raise MeasureError(
            "weight_dtype",
            weight_dtype,
            rule=f"{weight_dtype!r} cannot be measured; measured profiles use "
            f"{' or '.join(_TORCH_DTYPES)} weights (plan quantised weights with an analytic "
            "profile calibrated on this GPU kind: `ppplan calibrate`)",
        )
    if budget_seconds is not None and not (budget_seconds > 0 and math.isfinite(budget_seconds)):
        raise MeasureError("budget_seconds", budget_seconds, rule="must be a positive number of seconds")


def run_profile(
    model: str | ModelConfig,
    *,
    device: str = "cpu",
    weight_dtype: str = "bf16",
    kv_dtype: str = "bf16",
    grid: ProfileGrid | None = None,
    budget_seconds: float | None = None,
    gpu: str | None = None,
    cpu_threads: int | None = None,
    console: Any | None = None,
    tp: int = 1,
    cuda_graphs: bool = False,
) -> Profile:
    """Measure every distinct planning unit of ``model`` on ``device`` and return a measured Profile.

    Args:
        model: preset name, config path or loaded config.
        device: 'cpu', 'cuda' or 'cuda:N'.
        weight_dtype: 'bf16' or 'fp16' (quantised kernels are not measured here).
        kv_dtype: KV-cache dtype the profile's KV bytes are stated in (the cache is measured in
            elements per token in the compute dtype and converted).
        grid: points to measure; default the finest grid of the device whose estimate fits
            ``budget_seconds`` (or ``PPPLAN_PROFILE_GRID`` when set).
        budget_seconds: bound of the run, seconds: picks a coarser grid when the estimate is over,
            and skips remaining points (each unit keeps at least one prefill and one decode point)
            once spent.
        gpu: catalog GPU kind a CUDA measurement stands for (default: from the device name).
        cpu_threads: torch intra-op threads while measuring on CPU (default: torch's current
            setting); one thread gives steadier numbers on a shared host.
        console: a rich Console for the progress bar (None: silent).
        tp: measure the shard one of ``tp`` tensor-parallel ranks runs
            (:func:`ppplan.profiler.measure.shards.shard_hf_config`); the profile's bytes and FLOPs
            stay the whole model's, its provenance records ``tp`` and the cost model scales from there.
        cuda_graphs: on CUDA, time decode steps as CUDA-graph replays (engines' decode); CPU: ignored
            (no graphs), the profile is labelled eager.

    Returns:
        A schema-v1 Profile, ``kind='measured'``, ``device`` = the catalog name, with the units and
        indices of the analytic profile, measured points per unit and provenance.

    Raises:
        MeasureError: unknown device, CUDA without a GPU, unsupported dtype, grid too large.
    """
    _check_dtype_and_budget(weight_dtype, budget_seconds)
    dev = resolve_device(device, gpu)
    cfg = model if isinstance(model, ModelConfig) else load_model_config(model)
    spec = model_spec(cfg)
    base = analytic_profile(spec, weight_dtype, kv_dtype)
    dtype_bytes = int(element_bytes(weight_dtype))
    distinct = _distinct_units(base.units)
    if dev.cuda:
        timer = Timer(dev=dev, warmup=WARMUP_STEPS_CUDA, timed=TIMED_STEPS_CUDA, graphs=cuda_graphs)
    else:
        timer = Timer(dev=dev, warmup=WARMUP_STEPS_CPU, timed=TIMED_STEPS_CPU)
    choice = _choose_grid(grid, distinct, base, spec, timer, dtype_bytes, budget_seconds)
    check_memory(distinct, spec, choice.grid, dev, dtype_bytes)

    from ppplan.profiler.models import build_hf_config, build_meta_model  # lazy: imports transformers (~2 s)

    hf = shard_hf_config(build_hf_config(cfg), tp)
    meta = build_meta_model(hf)
    ctx = UnitContext(
        spec=spec,
        hf=hf,
        model=meta,
        dev=dev,
        dtype=_TORCH_DTYPES[weight_dtype],
        kv_elem_bytes=element_bytes(kv_dtype),
        timer=timer,
        rotary=rotary_of(meta, hf, dev),
    )
    if dev.cuda:
        torch.cuda.set_device(dev.torch_device)
    if cpu_threads is not None and cpu_threads < 1:
        raise MeasureError("cpu_threads", cpu_threads, rule="must be at least 1")
    saved_threads = torch.get_num_threads()
    threads = cpu_threads or saved_threads
    try:
        torch.set_num_threads(threads)
        measured = _measure_all(ctx, distinct, choice.grid, choice.estimate_s, budget_seconds, console)
    finally:
        torch.set_num_threads(saved_threads)

    units = [u.model_copy(update={"measured": measured.by_signature[u.signature].points}) for u in base.units]
    prov = _provenance(
        base,
        hf,
        dev,
        timer,
        choice.grid,
        measured,
        weight_dtype=weight_dtype,
        kv_dtype=kv_dtype,
        threads=threads,
        distinct=len(distinct),
        budget_seconds=budget_seconds,
    )
    prov["tp"] = tp
    if timer.graphs:
        prov["timing"] = "mixed" if timer.graph_fallbacks else "cuda-graph"
        if timer.graph_fallbacks:
            prov["graph_fallbacks"] = f"{len(timer.graph_fallbacks)} step(s) timed eagerly: {timer.graph_fallbacks[0]}"
    return base.model_copy(update={"kind": "measured", "device": dev.catalog.name, "units": units, "provenance": prov})


def run_profile_cli(
    *,
    model: str,
    device: str,
    weight_dtype: str,
    kv_dtype: str,
    budget_seconds: float | None,
    gpu: str | None,
    console: Any | None,
    grid: str | None = None,
    cpu_threads: int | None = None,
    tp: int = 1,
    cuda_graphs: bool = False,
) -> Profile:
    """``ppplan profile MODEL --device …``: :func:`run_profile` with a progress bar and a summary line.

    Raises:
        MeasureError: see :func:`run_profile` (the CLI prints it and exits with status 2).
    """
    prof = run_profile(
        model,
        device=device,
        weight_dtype=weight_dtype,
        kv_dtype=kv_dtype,
        grid=parse_grid(grid) if grid else None,
        budget_seconds=budget_seconds,
        gpu=gpu,
        cpu_threads=cpu_threads,
        console=console,
        tp=tp,
        cuda_graphs=cuda_graphs,
    )
    if console is not None:
        pv = prof.provenance
        skipped = pv.get("points_skipped_for_budget") or 0
        console.print(
            f"measured {pv['distinct_units']} distinct of {pv['units']} units on {pv['device_name']} "
            f"(catalog {prof.device}, {pv['dtype']}, TP shard {tp}, {pv['timing']} timing) in "
            f"{pv['profile_seconds']:.1f} s; grid {pv['grid']}"
            + (f"; {skipped} point(s) skipped to stay within the budget" if skipped else ""),
            highlight=False,
        )
    return prof


def iter_points(profile: Profile) -> Iterator[tuple[int, Literal["prefill", "decode"], int, int, float]]:
    """(unit index, phase, tokens, context, seconds) of every measured point of ``profile``."""
    for u in profile.units:
        for p in u.measured:
            yield u.index, p.phase, p.tokens, p.context, p.time_s

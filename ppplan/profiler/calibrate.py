"""Calibration: fit the analytic model's efficiency factors for one GPU kind from measured times.

The analytic time of a unit at TP 1 is ``max(C/η_f, M/η_b) + ω·min(C/η_f, M/η_b) + overhead`` where ``C`` is its
compute time at the catalog's peak FLOP/s and ``M`` its memory time at the catalog's bandwidth
(both from :class:`partitioner.costmodel.CostModel`, so the fit and the planner share one formula).
:func:`fit_efficiency` finds the ``η_f``, ``η_b``, per-unit ``overhead`` and overlap ``ω`` that minimise the mean
squared log error over the points (a relative error, so a 50 µs embedding weighs as much as a 50 ms
layer), by a coarse-to-fine grid search: no solver dependency, deterministic, and it always returns
a value inside the bounds of :class:`profiler.profile.Efficiency`.

Points come from a measured profile (:func:`points_from_profile`) or, later, from executor
measurements of a running plan; both are plain ``(unit index, phase, tokens, context, seconds)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ppplan.core.costmodel import CostModel
from ppplan.core.gpus import GPUSpec, get_gpu
from ppplan.core.profile import Efficiency, Profile, ProfileError

__all__ = [
    "CalibrationPoint",
    "apply_calibration",
    "fit_efficiency",
    "points_from_profile",
    "predict_points",
    "relative_errors",
]

#: bounds of the fitted factors (Efficiency's own validation allows (0, 100]); above 1 only where the
#: catalog's peaks are nominal (the CPU pseudo-device), never on a datasheet GPU in practice
ETA_MIN, ETA_MAX = 1e-4, 100.0
#: grid sizes of the coarse search and of each refinement (per factor; overlap has its own)
COARSE_STEPS = 40
REFINE_STEPS = 20
REFINE_ROUNDS = 3
OVERLAP_STEPS = 11
REFINE_OVERLAP_STEPS = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibrationPoint:
    """One measured forward of one unit at TP 1."""

    unit: int
    """unit index 0..L+1 in the profile"""
    phase: Literal["prefill", "decode"]
    tokens: int
    """prefill: prompt tokens of one sequence; decode: sequences in the batch"""
    context: int
    """decode: cached tokens per sequence; prefill: equal to ``tokens``"""
    seconds: float
    """measured time of the forward, seconds (> 0)"""
    batch: int = 1
    """identical sequences in the one forward (a batched prefill): compute and memory time scale by
    ``batch``, the fixed overhead is paid once"""


def points_from_profile(profile: Profile) -> list[CalibrationPoint]:
    """Every measured point of ``profile`` as calibration points."""
    return [
        CalibrationPoint(unit=u.index, phase=p.phase, tokens=p.tokens, context=p.context, seconds=p.time_s)
        for u in profile.units
        for p in u.measured
    ]


def _components(profile: Profile, gpu: GPUSpec, points: Sequence[CalibrationPoint]) -> tuple[np.ndarray, np.ndarray]:
    """Compute time at peak (η_f = 1) and memory time at full bandwidth (η_b = 1), seconds per point."""
    analytic = profile.model_copy(update={"kind": "analytic", "calibration": {}})
    cm = CostModel(analytic, gpu, roofline=True)  # the fit's own formula, never the kernel model
    huge = 1e12  # the other roofline term vanishes next to this
    comp_only = Efficiency.model_construct(compute=1.0, memory=huge, overhead_s=0.0)
    mem_only = Efficiency.model_construct(compute=huge, memory=1.0, overhead_s=0.0)
    comp, mem = np.empty(len(points)), np.empty(len(points))
    cache: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = {}
    for k, p in enumerate(points):
        key = (p.phase, p.tokens, p.context)
        if key not in cache:
            cm.efficiency = comp_only
            c = cm._analytic(1, p.phase, p.tokens, p.context)
            cm.efficiency = mem_only
            m = cm._analytic(1, p.phase, p.tokens, p.context)
            cache[key] = (c, m)
        c, m = cache[key]
        comp[k], mem[k] = float(c[p.unit]) * p.batch, float(m[p.unit]) * p.batch
    return comp, mem


def _validate(profile: Profile, points: Sequence[CalibrationPoint]) -> None:
    if not points:
        raise ProfileError(
            "calibration",
            rule=f"profile {profile.label} has no measured points to fit "
            "(measure it with `ppplan profile MODEL --device cpu|cuda`)",
        )
    n = len(profile.units)
    for p in points:
        if not 0 <= p.unit < n:
            raise ProfileError(
                "calibration", p.unit, rule=f"point unit {p.unit} is outside 0..{n - 1} of {profile.model.name}"
            )
        if not (p.seconds > 0 and math.isfinite(p.seconds)):
            raise ProfileError(
                "calibration", p.seconds, rule=f"point of unit {p.unit} has seconds {p.seconds!r}; must be > 0"
            )
        if p.tokens <= 0 or p.batch <= 0:
            raise ProfileError(
                "calibration",
                rule=f"point of unit {p.unit} has tokens {p.tokens} and batch {p.batch}; both must be > 0",
            )


def _search(
    comp: np.ndarray, mem: np.ndarray, meas: np.ndarray, group: np.ndarray
) -> tuple[float, float, dict[int, float], float, float]:
    """Coarse-to-fine search of (η_f, η_b, overhead per unit group, overlap) minimising the mean
    squared log error.

    ``group`` tags each point with its unit group (0: decoder layers, 1: embedding, 2: head), each
    with its own fixed overhead. For given (η_f, η_b, ω) the groups' overheads are independent, so
    each is minimised on its own grid: the search costs one overhead dimension, not one per group.

    Returns (η_f, η_b, {group: overhead seconds}, overlap, error). Identical points (identical units
    measured once and repeated) are merged with their multiplicity as weight, so a homogeneous
    80-layer profile costs no more to fit than its distinct units.
    """
    rows, weight = np.unique(np.stack([comp, mem, meas, group], axis=1), axis=0, return_counts=True)
    comp, mem, meas, grp = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3].astype(int)
    w = weight / weight.sum()
    log_meas = np.log(meas)
    groups = sorted({int(g) for g in grp})
    sel = {g: grp == g for g in groups}
    o_hi = {g: float(np.min(meas[sel[g]])) for g in groups}  # no overhead exceeds its fastest forward
    lo_o, hi_o = dict.fromkeys(groups, 0.0), dict(o_hi)
    lo_f = lo_b = math.log(ETA_MIN)
    hi_f = hi_b = math.log(ETA_MAX)
    lo_w, hi_w = 0.0, 1.0
    best: tuple[float, float, dict[int, float], float, float] = (1.0, 1.0, dict.fromkeys(groups, 0.0), 0.0, math.inf)
    steps, w_steps = COARSE_STEPS, OVERLAP_STEPS
    for _ in range(REFINE_ROUNDS + 1):
        ef = np.exp(np.linspace(lo_f, hi_f, steps))
        eb = np.exp(np.linspace(lo_b, hi_b, steps))
        ovs = {g: np.linspace(lo_o[g], hi_o[g], steps) for g in groups}
        c = comp[None, None, :] / ef[:, None, None]
        m = mem[None, None, :] / eb[None, :, None]
        hi_cm, lo_cm = np.maximum(c, m), np.minimum(c, m)
        for om in np.linspace(lo_w, hi_w, w_steps):
            base = hi_cm + om * lo_cm  # (f, b, points)
            total = np.zeros((len(ef), len(eb)))
            pick: dict[int, np.ndarray] = {}
            for g in groups:
                pred = base[:, :, None, sel[g]] + ovs[g][None, None, :, None]  # (f, b, o, points of g)
                err = ((np.log(np.maximum(pred, 1e-15)) - log_meas[sel[g]]) ** 2) @ w[sel[g]]
                k = np.argmin(err, axis=2)
                total += np.take_along_axis(err, k[:, :, None], axis=2)[:, :, 0]
                pick[g] = ovs[g][k]
            i, j = np.unravel_index(int(np.argmin(total)), total.shape)
            if total[i, j] < best[4]:
                best = (
                    float(ef[i]),
                    float(eb[j]),
                    {g: float(pick[g][i, j]) for g in groups},
                    float(om),
                    float(total[i, j]),
                )
        # zoom around the best cell
        span_f = (hi_f - lo_f) / (steps - 1) * 2
        span_b = (hi_b - lo_b) / (steps - 1) * 2
        span_w = (hi_w - lo_w) / max(w_steps - 1, 1) * 2
        for g in groups:
            span_o = (hi_o[g] - lo_o[g]) / (steps - 1) * 2
            lo_o[g], hi_o[g] = max(0.0, best[2][g] - span_o), min(o_hi[g], best[2][g] + span_o)
        lf, lb = math.log(best[0]), math.log(best[1])
        lo_f, hi_f = max(math.log(ETA_MIN), lf - span_f), min(math.log(ETA_MAX), lf + span_f)
        lo_b, hi_b = max(math.log(ETA_MIN), lb - span_b), min(math.log(ETA_MAX), lb + span_b)
        lo_w, hi_w = max(0.0, best[3] - span_w), min(1.0, best[3] + span_w)
        steps, w_steps = REFINE_STEPS, REFINE_OVERLAP_STEPS
    return best


def relative_errors(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """|predicted / measured − 1| per point."""
    return np.abs(predicted / measured - 1.0)


def fit_efficiency(
    profile: Profile, gpu: str | GPUSpec, points: Iterable[CalibrationPoint], *, source: str = ""
) -> Efficiency:
    """Fit ``Efficiency`` (η_f, η_b, overlap ω, and a fixed overhead per forward for each unit kind:
    decoder layer, embedding, head) of ``gpu`` to measured unit times.

    Args:
        profile: the profile whose units the points refer to (its bytes and FLOPs are used; its own
            measured points and calibration are ignored).
        gpu: catalog GPU kind (name or spec) the points were measured on, at TP 1.
        points: measured forwards; see :class:`CalibrationPoint`.
        source: provenance text stored in the result (e.g. the profile label).

    Returns:
        The fitted factors with ``fit_error`` = median relative error per phase ('prefill',
        'decode') and 'all', and ``points`` = how many points were fitted.

    Raises:
        ProfileError: no points, a unit index outside the profile, a non-positive time.
    """
    spec = gpu if isinstance(gpu, GPUSpec) else get_gpu(gpu)
    pts = list(points)
    _validate(profile, pts)
    comp, mem = _components(profile, spec, pts)
    meas = np.array([p.seconds for p in pts])
    kinds = ("decoder", "embed", "head")
    group = np.array([kinds.index(profile.units[p.unit].kind) for p in pts])
    eta_f, eta_b, overheads, overlap, _ = _search(comp, mem, meas, group)
    # a kind without points takes the decoder layers' overhead (or, without those, any fitted one)
    overhead = overheads.get(0, next(iter(overheads.values())))
    c, m = comp / eta_f, mem / eta_b
    per_point = np.array([overheads.get(int(g), overhead) for g in group])
    pred = np.maximum(c, m) + overlap * np.minimum(c, m) + per_point
    err = relative_errors(pred, meas)
    fit_error = {"all": float(np.median(err))}
    for phase in ("prefill", "decode"):
        sel = np.array([p.phase == phase for p in pts])
        if sel.any():
            fit_error[phase] = float(np.median(err[sel]))
    return Efficiency(
        compute=eta_f,
        memory=eta_b,
        overhead_s=overhead,
        embed_overhead_s=overheads.get(1),
        head_overhead_s=overheads.get(2),
        overlap=overlap,
        fit_error=fit_error,
        points=len(pts),
        source=source or f"fit to {len(pts)} points",
    )


def apply_calibration(profile: Profile, gpu: str, efficiency: Efficiency) -> Profile:
    """``profile`` with ``calibration[gpu] = efficiency`` (other GPU kinds kept)."""
    name = get_gpu(gpu).name
    cal = dict(profile.calibration)
    cal[name] = efficiency
    return profile.model_copy(update={"calibration": cal})


def predict_points(profile: Profile, gpu: str | GPUSpec, points: Sequence[CalibrationPoint]) -> np.ndarray:
    """Seconds the cost model predicts for each point with the profile's calibration (analytic only:
    the profile's measured points are ignored, so this tests the calibrated roofline itself)."""
    spec = gpu if isinstance(gpu, GPUSpec) else get_gpu(gpu)
    cm = CostModel(profile.model_copy(update={"kind": "analytic"}), spec)
    out = np.empty(len(points))
    for k, p in enumerate(points):
        out[k] = float(cm.unit_times(1, p.phase, p.tokens, p.context)[p.unit])
    return out


def held_out_errors(fitted: Efficiency, measured: Profile, gpu: str) -> dict[str, Any]:
    """Predict every measured point of ``measured`` (another model, same GPU kind) with its analytic
    profile calibrated by ``fitted``; the median |predicted / measured − 1| per phase, per unit kind
    and phase, and the points themselves (unit, kind, phase, tokens, context, measured s, predicted s).
    """
    # the measured profile's own bytes and FLOPs, without its measured points: the analytic model
    units = [u.model_copy(update={"measured": []}) for u in measured.units]
    base = measured.model_copy(update={"kind": "analytic", "calibration": {}, "units": units})
    cal = apply_calibration(base, gpu, fitted)
    pts = points_from_profile(measured)
    meas = np.array([p.seconds for p in pts])
    pred = predict_points(cal, gpu, pts)
    err = relative_errors(pred, meas)
    kinds = [measured.units[p.unit].kind for p in pts]
    out: dict[str, Any] = {"phase": {}, "kind_phase": {}, "points": []}
    for phase in ("prefill", "decode"):
        sel = [k for k, p in enumerate(pts) if p.phase == phase]
        if sel:
            out["phase"][phase] = float(np.median(err[sel]))
        for kind in ("embed", "decoder", "head"):
            ks = [k for k in sel if kinds[k] == kind]
            if ks:
                out["kind_phase"][f"{kind} {phase}"] = float(np.median(err[ks]))
    out["points"] = [
        (p.unit, kinds[k], p.phase, p.tokens, p.context, float(meas[k]), float(pred[k])) for k, p in enumerate(pts)
    ]
    return out

"""Calibration: the fit recovers known factors, reports errors per phase, and the CLI writes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ppplan.api.cli import app
from ppplan.core.costmodel import CostModel
from ppplan.core.gpus import get_gpu
from ppplan.core.profile import Efficiency, MeasuredPoint, ProfileError
from ppplan.profiler.analytic import analytic_profile, model_spec
from ppplan.profiler.calibrate import (
    CalibrationPoint,
    apply_calibration,
    fit_efficiency,
    predict_points,
)
from ppplan.profiler.profile_file import load_profile

TRUE = Efficiency(compute=0.3, memory=0.05, overhead_s=2e-4)


def _synthetic_points(model: str, true: Efficiency = TRUE) -> list[CalibrationPoint]:
    prof = apply_calibration(analytic_profile(model_spec(model)), "CPU", true)
    cm = CostModel(prof, get_gpu("CPU"))
    pts = []
    for phase, shapes in (
        ("prefill", [(n, n) for n in (16, 64, 256, 1024)]),
        ("decode", [(b, c) for b in (1, 8, 64) for c in (64, 512)]),
    ):
        for tokens, ctx in shapes:
            t = cm.unit_times(1, phase, tokens, ctx)  # type: ignore[arg-type]
            pts += [
                CalibrationPoint(unit=i, phase=phase, tokens=tokens, context=ctx, seconds=float(t[i]))  # type: ignore[arg-type]
                for i in range(len(t))
            ]
    return pts


def test_fit_recovers_known_factors_and_predicts_another_model() -> None:
    pts = _synthetic_points("tiny-llama")
    eff = fit_efficiency(analytic_profile(model_spec("tiny-llama")), "CPU", pts)
    assert eff.points == len(pts)
    assert set(eff.fit_error) == {"all", "prefill", "decode"}
    assert eff.fit_error["all"] < 0.02
    # a second model on the same GPU kind is predicted within 15 % by the fitted factors
    other = _synthetic_points("tiny-moe")
    cal = apply_calibration(analytic_profile(model_spec("tiny-moe")), "CPU", eff)
    pred = predict_points(cal, "CPU", other)
    meas = np.array([p.seconds for p in other])
    assert np.median(np.abs(pred / meas - 1)) < 0.15


def test_fit_recovers_an_overhead_per_unit_kind() -> None:
    """Eager decoder layers launch tens of kernels, an embedding one: one overhead for all units could
    not fit both (the H100 profiles need ~0.8 ms per 8B layer and ~20 µs per embedding)."""
    true = Efficiency(
        compute=0.5, memory=0.7, overhead_s=8e-4, embed_overhead_s=2e-5, head_overhead_s=1e-4, overlap=0.3
    )
    pts = _synthetic_points("tiny-llama", true)
    eff = fit_efficiency(analytic_profile(model_spec("tiny-llama")), "CPU", pts)
    assert eff.fit_error["all"] < 0.02
    assert eff.overhead_s == pytest.approx(8e-4, rel=0.1)
    assert eff.overhead_of("embed") == pytest.approx(2e-5, rel=0.25)
    assert eff.overhead_of("head") == pytest.approx(1e-4, rel=0.25)
    other = _synthetic_points("llama-3.1-8b", true)  # same kinds of unit, other sizes
    cal = apply_calibration(analytic_profile(model_spec("llama-3.1-8b")), "CPU", eff)
    meas = np.array([p.seconds for p in other])
    assert np.median(np.abs(predict_points(cal, "CPU", other) / meas - 1)) < 0.05
    # an Efficiency without per-kind figures (stored before they existed) uses overhead_s for all
    old = Efficiency(compute=0.5, memory=0.7, overhead_s=8e-4)
    assert old.overhead_of("embed") == old.overhead_of("head") == 8e-4


def test_fit_rejects_bad_points() -> None:
    prof = analytic_profile(model_spec("tiny-llama"))
    with pytest.raises(ProfileError, match="no measured points"):
        fit_efficiency(prof, "CPU", [])
    with pytest.raises(ProfileError, match="unit 99"):
        fit_efficiency(prof, "CPU", [CalibrationPoint(unit=99, phase="decode", tokens=1, context=8, seconds=1e-3)])
    with pytest.raises(ProfileError, match="seconds"):
        fit_efficiency(prof, "CPU", [CalibrationPoint(unit=1, phase="decode", tokens=1, context=8, seconds=0.0)])


def test_cli_calibrate(tmp_path: Path) -> None:
    # a measured profile with synthetic points (the measuring itself is tested elsewhere)
    ana = analytic_profile(model_spec("tiny-llama"))
    pts = _synthetic_points("tiny-llama")
    units = [
        u.model_copy(
            update={
                "measured": [
                    MeasuredPoint(phase=p.phase, tokens=p.tokens, context=p.context, time_s=p.seconds)
                    for p in pts
                    if p.unit == u.index
                ]
            }
        )
        for u in ana.units
    ]
    measured = ana.model_copy(update={"kind": "measured", "device": "CPU", "units": units})
    src = tmp_path / "m.json"
    src.write_text(measured.to_json())
    runner = CliRunner()
    out = tmp_path / "c.json"
    r = runner.invoke(app, ["calibrate", str(src), "--out", str(out)])
    assert r.exit_code == 0, r.output
    cal = load_profile(out)
    assert cal.calibration["CPU"].compute == pytest.approx(TRUE.compute, rel=0.1)
    assert "prefill" in r.output and "decode" in r.output
    # applying the fit to another model's analytic profile
    out2 = tmp_path / "moe.json"
    r = runner.invoke(app, ["calibrate", str(src), "--model", "tiny-moe", "--out", str(out2)])
    assert r.exit_code == 0, r.output
    moe = load_profile(out2)
    assert moe.kind == "analytic" and moe.model.name == "tiny-moe" and "CPU" in moe.calibration
    r = runner.invoke(
        app,
        [
            "plan",
            "tiny-moe",
            "--gpus",
            "2xCPU",
            "--profile",
            str(out2),
            "--no-save",
            "--prompt-tokens",
            "64",
            "--output-tokens",
            "16",
            "--concurrency",
            "4",
        ],
    )
    assert r.exit_code == 0, r.output
    # bad input: exit 2, no file
    for args in ([str(out2)], [str(src), "--gpu", "H100"], [str(tmp_path / "missing.json")]):
        bad = tmp_path / "bad.json"
        r = runner.invoke(app, ["calibrate", *args, "--out", str(bad)])
        assert r.exit_code == 2 and not bad.exists(), r.output
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(src.read_text()[:100])
    r = runner.invoke(app, ["calibrate", str(corrupt)])
    assert r.exit_code == 2 and "not valid JSON" in r.output

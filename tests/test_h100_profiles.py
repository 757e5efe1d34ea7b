"""The measured H100 profiles committed as data: they load, belong to their presets, and calibrate.

These are real measurements (scripts/gpu_session.sh on an H100 80GB HBM3, docs/gpu-runs/); the
test pins what they show so a cost-model change that loses the fit is caught without a GPU.
"""

from __future__ import annotations

from importlib import resources

import pytest
from typer.testing import CliRunner

from ppplan.api.cli import app
from ppplan.core.profile import Profile
from ppplan.profiler.analytic import model_spec
from ppplan.profiler.calibrate import fit_efficiency, held_out_errors, points_from_profile
from ppplan.profiler.profile_file import load_profile

GPU = "H100-SXM-80GB"


def _load(name: str) -> Profile:
    return load_profile(str(resources.files("ppplan.profiler") / "data" / "profiles" / f"{name}.bf16.{GPU}.json"))


@pytest.mark.parametrize(
    "name", ["llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "qwen2.5-72b", "mixtral-8x7b", "gpt-oss-120b"]
)
def test_committed_profile_is_a_measured_h100_profile_of_its_preset(name: str) -> None:
    prof = _load(name)
    assert prof.kind == "measured" and prof.device == GPU
    assert prof.model.config_hash == model_spec(name).config_hash  # a changed preset makes the data stale
    assert "H100" in str(prof.provenance["device_name"]) and prof.provenance["cuda"]
    distinct = {u.signature for u in prof.units}
    assert prof.provenance["distinct_units"] == len(distinct)
    for u in prof.units:
        assert u.measured and all(p.time_s > 0 for p in u.measured)
        if u.kind == "decoder":
            pre = sorted((p.tokens, p.time_s) for p in u.measured if p.phase == "prefill")
            assert pre[-1][1] > pre[0][1]  # 8192 tokens take longer than 128


def test_calibration_on_the_8b_predicts_the_large_dense_models_within_15_percent() -> None:
    src = _load("llama-3.1-8b")
    eff = fit_efficiency(src, GPU, points_from_profile(src), source=src.label)
    assert eff.overhead_s > 10 * eff.overhead_of("embed")  # eager layers: many launches, an embedding one
    for name in ("llama-3.1-70b", "llama-3.1-405b", "qwen2.5-72b"):
        res = held_out_errors(eff, _load(name), GPU)
        assert res["phase"]["prefill"] < 0.15 and res["phase"]["decode"] < 0.15, (name, res["phase"])


def test_plan_with_a_shipped_profile_by_name() -> None:
    r = CliRunner().invoke(
        app,
        [
            "plan",
            "llama-3.1-8b",
            "--gpus",
            "2xH100",
            "--profile",
            "llama-3.1-8b.bf16.H100-SXM-80GB",
            "--no-save",
            "--json",
            "-",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "measured:llama-3.1-8b:bf16/kv-bf16@H100-SXM-80GB" in r.output
    r = CliRunner().invoke(
        app, ["plan", "llama-3.1-8b", "--gpus", "2xH100", "--profile", "llama-9b.bf16.H100", "--no-save"]
    )
    assert r.exit_code == 2 and "llama-3.1-70b.bf16.H100-SXM-80GB" in r.output  # the message lists them

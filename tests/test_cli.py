"""The ppplan CLI: tables by default, JSON and exports for machines, one-line user errors with exit 2,
one-line internal errors with exit 1 (the traceback under ``--debug``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ppplan.api.cli import app, main
from ppplan.api.cli import plan as cli_plan
from ppplan.api.store.engine import dispose_engine
from ppplan.api.store.migrate import upgrade
from ppplan.profiler.bundled import bundled_profile

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, list(args))
    return res.exit_code, res.stdout, res.stderr


def test_plan_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    code, stdout, _ = run("plan", "kimi-k2", "--gpus", "8xH100", "--weight-dtype", "int4", "--json", str(out))
    assert code == 0, stdout
    assert "KV: " in stdout and "stages" in stdout and "free" in stdout and "defaults used" in stdout
    data = json.loads(out.read_text())
    assert data["schema_version"] == 1 and sum(data["partition"]) == 61
    assert all(s["memory"]["total_gib"] <= s["memory"]["limit_gib"] for s in data["stages"])


def test_export_vllm_relieves_head_stage() -> None:
    code, stdout, _ = run(
        "plan", "llama-3.1-8b", "--gpus", "4xH100", "--tp", "1", "--pp", "4", "--concurrency", "64", "--export", "vllm"
    )
    assert code == 0
    line = next(x for x in stdout.splitlines() if "VLLM_PP_LAYER_PARTITION=" in x)
    parts = [int(v) for v in line.split("VLLM_PP_LAYER_PARTITION=")[1].split()[0].split(",")]
    assert sum(parts) == 32 and parts != [8, 8, 8, 8] and parts[-1] < 8
    assert "--pipeline-parallel-size 4" in stdout and "--tensor-parallel-size 1" in stdout


@pytest.mark.parametrize("fmt", ["sglang", "trtllm", "torch"])
def test_other_exports(fmt: str) -> None:
    code, stdout, _ = run("plan", "tiny-llama", "--gpus", "2xH100", "--tp", "1", "--pp", "2", "--export", fmt)
    assert code == 0
    if fmt == "sglang":
        assert "SGLANG_PP_LAYER_PARTITION=" in stdout and "--pp-size 2" in stdout
    elif fmt == "trtllm":
        assert json.loads(stdout)["pp_partition"]
    else:
        stages = json.loads(stdout)
        assert stages[0][0] == "model.embed_tokens" and stages[-1][-1] == "lm_head"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["plan", "no-such-model"], "model: 'no-such-model' is neither a bundled preset"),
        (["plan", "llama-3.1-8b", "--gpus", "8xV100"], "unknown GPU kind 'V100'"),
        (["plan", "llama-3.1-8b", "--concurrency", "0"], "concurrency: Input should be greater than or equal to 1"),
        (["plan", "llama-3.1-8b", "--prompt-tokens", "-3"], "prompt_tokens"),
        (["plan", "llama-3.1-8b", "--gpus", "0xH100"], "gpus: count must be at least 1"),
        (["plan", "llama-3.1-8b", "--tp", "3"], "tp: 3 does not divide the 32 attention heads"),
        (["plan", "llama-3.1-405b", "--gpus", "4xL4"], "does not fit"),
        (["plan", "llama-3.1-8b", "--export", "foo"], "export: 'foo' is not one of"),
        (["plan", "llama-3.1-8b", "--weight-dtype", "int3"], "weight_dtype"),
        (["profile", "llama-3.1-8b"], "choose --analytic"),
    ],
)
def test_bad_input_exits_2_with_reason(args: list[str], needle: str) -> None:
    code, stdout, stderr = run(*args)
    assert code == 2
    assert needle in " ".join(stderr.split()), stderr
    assert "Traceback" not in stderr + stdout


def test_partition_json(tmp_path: Path) -> None:
    costs = tmp_path / "c.json"
    costs.write_text(json.dumps({"time": [1, 2, 3, 4, 5, 6], "memory": [1, 1, 1, 1, 1, 1]}))
    code, stdout, _ = run("partition", "--costs", str(costs), "--stages", "3", "--json")
    assert code == 0
    out = json.loads(stdout)
    assert out["sizes"] == [3, 2, 1] or sum(out["sizes"]) == 6
    assert out["bottleneck"] == 9 and out["optimal"] is True


def test_partition_infeasible_and_bad_files(tmp_path: Path) -> None:
    costs = tmp_path / "c.json"
    costs.write_text(json.dumps({"time": [1, 1], "memory": [5, 5]}))
    code, stdout, _ = run("partition", "--costs", str(costs), "--stages", "2", "--memory-limit", "4", "--json")
    assert code == 1 and json.loads(stdout)["optimal"] is False and "limit" in json.loads(stdout)["reason"]
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    code, _, stderr = run("partition", "--costs", str(bad), "--stages", "1")
    assert code == 2 and "not valid JSON" in stderr
    code, _, stderr = run("partition", "--costs", str(tmp_path / "missing.json"), "--stages", "1")
    assert code == 2
    costs.write_text(json.dumps({"time": [1, "x"]}))
    code, _, stderr = run("partition", "--costs", str(costs), "--stages", "1")
    assert code == 2 and "costs.time: must be a list of numbers" in stderr
    costs.write_text(json.dumps({"time": [1, 2]}))
    code, _, stderr = run("partition", "--costs", str(costs), "--stages", "3")
    assert code == 2 and "stages: 3 stages need at least 3 units" in stderr


def test_models_gpus_profile(tmp_path: Path) -> None:
    code, stdout, _ = run("models", "--json")
    assert code == 0 and any(m["name"] == "deepseek-v3" for m in json.loads(stdout))
    code, stdout, _ = run("gpus", "--json")
    assert code == 0 and any(g["name"] == "B200" for g in json.loads(stdout))
    out = tmp_path / "p.json"
    code, _, _ = run("profile", "mixtral-8x7b", "--analytic", "--out", str(out))
    assert code == 0 and json.loads(out.read_text())["kind"] == "analytic"


def test_console_script_runs_without_torch() -> None:
    code = (
        "import sys, ppplan.api.cli as c; sys.argv=['ppplan','plan','llama-3.1-70b','--gpus','8xH100','--no-save'];"
        "\ntry:\n    c.main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'planning a preset must not import torch'"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "TP" in res.stdout


def test_partitioner_is_pure() -> None:
    code = (
        "import ppplan.partitioner.dp, ppplan.partitioner.search, ppplan.core.costmodel, sys;"
        "assert 'torch' not in sys.modules"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_partition_cpsat_and_heterogeneous(tmp_path: Path) -> None:
    costs = tmp_path / "c.json"
    costs.write_text(json.dumps({"time": [1, 2, 3, 4, 5, 6], "memory": [1, 1, 1, 1, 1, 1]}))
    outs = []
    for solver in ("dp", "cpsat"):
        code, stdout, _ = run(
            "partition", "--costs", str(costs), "--stages", "3", "--solver", solver, "--stage-speed", "1,1,2", "--json"
        )
        assert code == 0, stdout
        outs.append(json.loads(stdout))
    assert outs[0]["bottleneck"] == pytest.approx(outs[1]["bottleneck"], rel=1e-5)
    assert outs[1]["status"] == "optimal"
    code, _, stderr = run("partition", "--costs", str(costs), "--stages", "3", "--stage-speed", "1,x")
    assert code == 2 and "stage_speed" in stderr
    code, _, stderr = run("partition", "--costs", str(costs), "--stages", "3", "--stage-speed", "1,1")
    assert code == 2 and "stage_speed: needs 3 entries" in stderr


def test_validate_command(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    assert (
        run("plan", "llama-3.1-8b", "--gpus", "4xH100", "--tp", "1", "--pp", "4", "--json", str(out), "--no-save")[0]
        == 0
    )
    code, stdout, _ = run("validate", str(out))
    assert code == 0 and "consistent" in stdout
    data = json.loads(out.read_text())
    data["partition"] = [8, 8, 8, 9]
    out.write_text(json.dumps(data))
    code, stdout, _ = run("validate", str(out))
    assert code == 1 and "partition: sums to 33" in stdout
    out.write_text("{}")
    code, _, stderr = run("validate", str(out))
    assert code == 2 and "is not a Plan JSON v1" in stderr


SHIPPED = "llama-3.1-70b.bf16.H100-SXM-80GB"


def test_plan_with_a_shipped_or_stored_profile_is_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    upgrade(url)  # `ppplan db upgrade` on a fresh database
    monkeypatch.setenv("PPPLAN_DATABASE_URL", url)
    try:
        code, stdout, stderr = run("plan", "llama-3.1-70b", "--gpus", "8xH100", "--profile", SHIPPED)
        assert code == 0, stderr
        plan_id = stdout.strip().splitlines()[-1].split()[-1]
        code, stdout, _ = run("plans", "list", "--json")
        listed = json.loads(stdout)["data"]
        assert code == 0 and [p["id"] for p in listed] == [plan_id]
        profile_id = listed[0]["profile_id"]
        assert profile_id == bundled_profile(SHIPPED).profile_id  # the shipped profile was stored with it
        # the stored profile by its id: the same request, so the same plan
        code, stdout, stderr = run("plan", "llama-3.1-70b", "--gpus", "8xH100", "--profile", profile_id)
        assert code == 0, stderr
        assert stdout.strip().splitlines()[-1].split()[-1] == plan_id
    finally:
        dispose_engine(url)


def _main(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["ppplan", *args])
    with pytest.raises(SystemExit) as info:
        main()
    return int(info.value.code or 0)


def test_internal_errors_are_one_line_unless_debug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*_a: object, **_kw: object) -> None:
        raise RuntimeError("boom [not markup]\nsecond line")

    monkeypatch.setattr(cli_plan, "plan_request", broken)
    assert _main(monkeypatch, "plan", "llama-3.1-8b", "--no-save") == 1
    err = capsys.readouterr().err
    assert err == ("error: internal error (RuntimeError: boom [not markup]); rerun with --debug for the traceback\n")
    assert _main(monkeypatch, "--debug", "plan", "llama-3.1-8b", "--no-save") == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "RuntimeError: boom [not markup]" in err
    # user errors stay one line with exit status 2, --debug or not
    assert _main(monkeypatch, "--debug", "plan", "llama-3.1-8b", "--export", "foo", "--no-save") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: export: 'foo' is not one of")

"""Executor runs with real ranks (torch.distributed, gloo on CPU): correctness of PP 2–4 cuts, TP inside
a stage, the two-host rehearsal on loopback, a dying rank, storing and calibrating from measurements."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ppplan.executor.launch import free_port
from ppplan.executor.recut import recut
from ppplan.executor.run import run_plan
from ppplan.executor.spec import RankFailedError
from ppplan.partitioner.request import PlanRequest
from ppplan.profiler.resolve import plan_request

pytestmark = pytest.mark.multiprocess

#: the console script, whatever the PATH (``python -m api.cli`` would register commands on a second app)
PPPLAN = [sys.executable, "-c", "from ppplan.api.cli import main; main()"]
#: a short generation keeps each run a few seconds on a 2-core CI host
NEW_TOKENS = 4


def _plan(model: str, pp: int, tp: int = 1) -> dict:
    req = PlanRequest(
        model=model, gpus=f"{pp * tp}xCPU", pp=pp, tp=tp, prompt_tokens=12, output_tokens=NEW_TOKENS, concurrency=4
    )
    return plan_request(req).model_dump(mode="json")


def _assert_passed(report: dict | None, pp: int) -> dict:
    assert report is not None
    chk = report["check"]
    assert chk["passed"], chk
    assert chk["tokens_equal"] and chk["logits_max_abs_diff"] <= 1e-4
    assert len(report["stages"]) == pp
    for st in report["stages"]:
        for phase in ("prefill", "decode"):
            m = st["measured"][phase]
            assert m["compute_s"] > 0 and m["wait_s"] >= 0 and m["peak_bytes"] > 0
        if st["index"] < pp - 1:
            assert st["measured"]["prefill"]["bytes_sent"] > 0
    return report


@pytest.mark.parametrize(("model", "cut"), [("tiny-llama", [1, 3]), ("tiny-moe", [3, 1])])
def test_pp2_uneven_cut_matches_the_unsplit_model(model: str, cut: list[int]) -> None:
    plan = recut(_plan(model, 2), cut)
    report = _assert_passed(run_plan(plan), 2)
    assert [s["decoder_layers"] for s in report["stages"]] == [[0, cut[0] - 1], [cut[0], 3]]
    # the stage with three layers computes longer than the one with one
    heavy = 0 if cut[0] == 3 else 1
    assert report["stages"][heavy]["measured"]["decode_ms"] > report["stages"][1 - heavy]["measured"]["decode_ms"]


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-moe"])
def test_pp4_matches_the_unsplit_model(model: str) -> None:
    _assert_passed(run_plan(_plan(model, 4)), 4)


def test_tp2_inside_pp2_stages_matches_the_unsplit_model() -> None:
    report = _assert_passed(run_plan(_plan("tiny-llama", 2, tp=2), new_tokens=3), 2)
    assert report["world_size"] == 4


def _ppplan(*args: str, env: dict[str, str] | None = None, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PPPLAN, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _stored_plan(model: str = "tiny-llama", gpus: str = "2xCPU") -> str:
    from ppplan.api.store_lookup import save_plan_from_cli

    req = PlanRequest(model=model, gpus=gpus, pp=2, tp=1, prompt_tokens=12, output_tokens=NEW_TOKENS, concurrency=4)
    return save_plan_from_cli(req, plan_request(req))


def test_run_stored_plan_stores_measurements_and_calibrates(tmp_path: Path) -> None:
    from ppplan.api.run_store import stored_measurements

    plan_id = _stored_plan()
    out = tmp_path / "report.json"
    res = _ppplan("run", plan_id, "--calibrate", "--json", str(out))
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    assert report["plan_id"] == plan_id and report["check"]["passed"] and report["comparable"]
    # this run's rows (other tests may have stored rows for the same plan: plan ids are content hashes)
    run_id = re.search(r"\(run (run-[0-9a-f]+)\)", res.stderr)
    assert run_id is not None, res.stderr
    rows = stored_measurements(plan_id, run_id.group(1))
    assert rows is not None and len(rows) == 4
    assert {(r["stage"], r["phase"]) for r in rows} == {(0, "prefill"), (0, "decode"), (1, "prefill"), (1, "decode")}
    assert "stored profile" in res.stdout and "replan with" in res.stdout
    assert "predicted vs measured" in res.stdout
    # the same loop from the calibrate command: fit from the stored rows, store and name the profile
    cal = tmp_path / "cal.json"
    res = _ppplan("calibrate", "--from-measurements", plan_id, "--out", str(cal))
    assert res.returncode == 0, res.stderr
    assert "stored calibrated profile" in res.stderr and json.loads(cal.read_text())["calibration"]["CPU"]
    bad = _ppplan("calibrate", "--from-measurements", "no-such-plan")
    assert bad.returncode == 2 and "no-such-plan" in bad.stderr


def test_calibrating_an_h100_plan_from_a_cpu_run_is_refused() -> None:
    """A fit is stored per GPU kind: CPU times must not become a calibrated H100."""
    from ppplan.api.run_store import stored_measurements

    plan_id = _stored_plan(gpus="2xH100")
    res = _ppplan("run", plan_id, "--device", "cpu", "--calibrate")
    assert res.returncode == 2, res.stderr
    assert "measured on CPU, not on the plan's H100-SXM-80GB" in " ".join(res.stderr.split())
    assert stored_measurements(plan_id) == []


def test_a_dying_rank_fails_the_run_quickly_and_stores_nothing() -> None:
    from ppplan.api.run_store import stored_measurements

    plan_id = _stored_plan("tiny-moe")
    t0 = time.monotonic()
    res = _ppplan("run", plan_id, "--timeout", "30", env={"PPPLAN_EXECUTOR_FAIL": "1:decode:2"})
    elapsed = time.monotonic() - t0
    assert res.returncode == 1
    err = " ".join(res.stderr.split())
    assert "run failed, nothing stored" in err
    assert "rank 1 (stage 1) failed" in err and "exits at decode step 2" in err
    assert elapsed < 60
    assert stored_measurements(plan_id) == []


def test_run_plan_raises_when_a_rank_dies(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PPPLAN_EXECUTOR_FAIL", "0:prefill:0")
    with pytest.raises(RankFailedError, match=r"rank 0 \(stage 0\) failed"):
        run_plan(_plan("tiny-llama", 2), run_dir=tmp_path, timeout_s=20)
    assert not (tmp_path / "result.json").exists()


def test_two_host_rehearsal_on_loopback(tmp_path: Path) -> None:
    """Two launcher invocations, node ranks 0 and 1, rendezvous on 127.0.0.1, one PP=2 plan."""
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(recut(_plan("tiny-llama", 2), [3, 1])))
    endpoint = f"127.0.0.1:{free_port()}"
    procs = []
    for node in (0, 1):
        cmd = [
            *PPPLAN,
            "run",
            str(plan_file),
            "--nnodes",
            "2",
            "--node-rank",
            str(node),
            "--rdzv-endpoint",
            endpoint,
            "--run-id",
            "rehearsal",
            "--run-dir",
            str(tmp_path / f"node{node}"),
            "--json",
            str(tmp_path / f"report{node}.json"),
            "--timeout",
            "60",
        ]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    report = json.loads((tmp_path / "report0.json").read_text())
    _assert_passed(report, 2)
    assert [s["rank"] for s in report["stages"]] == [0, 1]
    assert not (tmp_path / "report1.json").exists()
    assert "node 0 holds the results" in outs[1][1]

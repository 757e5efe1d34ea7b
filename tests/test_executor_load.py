"""Load runs (``ppplan run PLAN --workload poisson:RATE[:N]``): the request stream, the step-cost fit,
the stored rows, and one end-to-end run with real ranks (multiprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ppplan.executor.arrivals import LoadSpec, parse_load_workload, requests_of, resolve_load
from ppplan.executor.load_report import fit_step_cost, load_rows, measured_latencies, stage_slots
from ppplan.executor.spec import ExecutorError, parse_slow_ranks
from ppplan.partitioner.request import PlanRequest
from ppplan.profiler.resolve import plan_request

PPPLAN = [sys.executable, "-c", "from ppplan.api.cli import main; main()"]


def _plan(prompt: int = 12, output: int = 4) -> dict:
    req = PlanRequest(
        model="tiny-llama", gpus="2xCPU", pp=2, tp=1, prompt_tokens=prompt, output_tokens=output, concurrency=4
    )
    return plan_request(req).model_dump(mode="json")


def test_parse_load_workload_accepts_rate_and_count_and_names_the_rule() -> None:
    assert parse_load_workload("poisson:2.5") == (2.5, 24)
    assert parse_load_workload("poisson:10:7") == (10.0, 7)
    for bad, rule in [
        ("uniform:2", "poisson:RATE"),
        ("poisson:x", "RATE must be a number"),
        ("poisson:0", "RATE must be in"),
        ("poisson:nan", "RATE must be in"),
        ("poisson:1:0", "N must be"),
        ("poisson:1:2.5", "N must be"),
        ("poisson:1:2:3", "poisson:RATE"),
    ]:
        with pytest.raises(ExecutorError, match=rule):
            parse_load_workload(bad)


def test_parse_slow_ranks() -> None:
    assert parse_slow_ranks(["1:3", "0:1.5"]) == {1: 3.0, 0: 1.5}
    for bad in (["1"], ["x:2"], ["1:0.5"], ["1:nan"], ["1:2", "1:3"]):
        with pytest.raises(ExecutorError, match="slow_rank"):
            parse_slow_ranks(bad)


def test_the_stream_is_seeded_poisson_with_the_plan_lengths() -> None:
    load = LoadSpec(rate=4.0, requests=4000, prompt_tokens=32, output_tokens=8, seed=3)
    reqs = requests_of(load)
    assert reqs == requests_of(load)  # a function of the spec only
    gaps = np.diff([0.0] + [r.arrival_s for r in reqs])
    assert abs(gaps.mean() - 0.25) < 0.02 and abs(gaps.std() / gaps.mean() - 1.0) < 0.1  # exponential: cv 1
    assert {r.prompt_tokens for r in reqs} == {32} and {r.output_tokens for r in reqs} == {8}
    spread = requests_of(LoadSpec(rate=4.0, requests=2000, prompt_tokens=32, output_tokens=8, prompt_tokens_sd=8))
    p = np.array([r.prompt_tokens for r in spread])
    assert abs(p.mean() - 32) < 1.5 and 6 < p.std() < 10 and p.min() >= 1


def test_resolve_load_scales_long_plans_down_on_cpu_and_says_so() -> None:
    plan = _plan(prompt=512, output=64)
    load, notes = resolve_load(plan, "cpu", 3.0, 10)
    assert (load.prompt_tokens, load.output_tokens) == (64, 16)
    assert load.groups == plan["degrees"]["micro_batches"]
    assert load.max_seqs == plan["degrees"]["micro_batches"] * plan["degrees"]["micro_batch_size"]
    assert "scaled down for CPU ranks: prompt 512 → 64" in notes[0]
    mine, _ = resolve_load(plan, "cpu", 3.0, 10, prompt_tokens=20, token_budget=7, max_seqs=3)
    assert (mine.prompt_tokens, mine.token_budget, mine.max_seqs) == (20, 7, 3)


def _steps(coef: tuple[float, float, float], comps: list[tuple[int, int]], hop: float) -> list[list[dict]]:
    """Two stages' records of a one-group ring of steps of known cost: each hop (stage 0 → 1, and
    the tokens back) takes ``hop`` seconds."""
    a, b, c = coef
    s0: list[dict] = []
    s1: list[dict] = []
    t = 0.0
    for k, (e, p) in enumerate(comps):
        dt = a + b * e + c * p
        s0.append({"entries": e, "prefill_tokens": p, "in_t": t, "out_t": t + dt, "busy_s": dt, "after": k - 1})
        t += dt + hop
        s1.append({"entries": e, "prefill_tokens": p, "in_t": t, "out_t": t + dt, "busy_s": dt})
        t += dt + hop
    return [s0, s1]


def test_fit_step_cost_recovers_the_step_cost_and_the_hop() -> None:
    comps = [(1 + k % 4, 32 * (k % 5 == 0)) for k in range(40)]
    steps = _steps((1e-3, 2e-3, 5e-5), comps, hop=0.5e-3)
    slots = stage_slots(steps)
    # a step occupies a stage for its busy time plus the hop into it (the first step found stage 0 idle)
    assert slots[1] == pytest.approx([s["busy_s"] + 0.5e-3 for s in steps[1]])
    assert slots[0][0] == pytest.approx(steps[0][0]["busy_s"])
    fit = fit_step_cost(steps)
    assert fit.fixed_s == pytest.approx(1.5e-3, rel=1e-6)
    assert (fit.per_entry_s, fit.per_prefill_token_s) == pytest.approx((2e-3, 5e-5), rel=1e-6)
    assert fit.hop_s == pytest.approx(0.5e-3, rel=1e-6) and fit.median_rel_error < 1e-6
    busy_only = fit_step_cost(steps, same_host=False)
    assert busy_only.fixed_s == pytest.approx(1e-3, rel=1e-6) and busy_only.hop_s == 0.0


def test_latencies_and_store_rows_per_request() -> None:
    timeline = [
        {"arrival_s": 1.0, "token_times_s": [1.1, 1.3, 1.5], "prompt_tokens": 8, "admitted_s": 1.02},
        {"arrival_s": 2.0, "token_times_s": [2.4], "prompt_tokens": 8, "admitted_s": None},
    ]
    ttft, tpot = measured_latencies(timeline)
    assert ttft == pytest.approx([0.1, 0.4]) and tpot == pytest.approx([0.2])
    report = {"stages": [{}, {}], "load": {"max_seqs": 4}, "requests": timeline}
    rows = load_rows(report, "run-x")
    assert [(r["phase"], r["stage"]) for r in rows] == [("ttft", 1), ("tpot", 1), ("ttft", 1)]
    assert rows[0]["compute_s"] == pytest.approx(0.1) and rows[0]["wait_s"] == pytest.approx(0.02)
    assert rows[1]["compute_s"] == pytest.approx(0.2) and rows[1]["tokens"] == 2
    assert all(r["run_id"] == "run-x" and r["micro_batch_size"] == 4 for r in rows)


def test_cli_refuses_bad_load_options_before_starting_ranks(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(_plan()))
    for args, text in [
        (["--workload", "poisson:-1"], "workload"),
        (["--workload", "poisson:1:99999"], "workload"),
        (["--token-budget", "8"], "token_budget"),
        (["--slow-rank", "7:2"], "slow_rank"),
    ]:
        res = subprocess.run([*PPPLAN, "run", str(path), *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and text in res.stderr and "Traceback" not in res.stderr, res.stderr


@pytest.mark.multiprocess
def test_load_run_end_to_end_checks_tokens_and_stores_measurements(tmp_path: Path) -> None:
    from ppplan.api.run_store import stored_measurements
    from ppplan.api.store_lookup import save_plan_from_cli

    req = PlanRequest(model="tiny-llama", gpus="2xCPU", pp=2, tp=1, prompt_tokens=12, output_tokens=4, concurrency=4)
    plan_id = save_plan_from_cli(req, plan_request(req))
    out = tmp_path / "load.json"
    # a budget of 5 tokens splits every 12-token prompt into chunks of 5, 5, 2 (a later chunk attends
    # to the cached prefix) while decodes of earlier requests share the steps
    res = subprocess.run(
        [*PPPLAN, "run", plan_id, "--workload", "poisson:40:5", "--token-budget", "5", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    chk = report["check"]
    assert chk["passed"] and chk["tokens_equal"] and chk["tokens_total"] == 5 * 4, chk
    m = report["measured"]
    assert m["requests"] == 5 and 0 < m["ttft"]["p50"] <= m["ttft"]["p90"] and m["tpot"]["p50"] > 0
    assert report["predicted"]["calibrated"]["tpot_s"] > 0 and report["fit"]["steps"] >= 3
    assert all(s["max_step_tokens"] <= 5 for s in report["stages"])  # the budget bounds every step
    assert "TTFT p50: measured" in res.stdout
    rows = stored_measurements(plan_id)
    assert rows is not None and sorted(r["phase"] for r in rows) == ["tpot"] * 5 + ["ttft"] * 5
    assert len({r["run_id"] for r in rows}) == 1

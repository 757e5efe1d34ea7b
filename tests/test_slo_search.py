"""The batch as a decision: SLO-driven search, objectives, the Pareto front, load figures, exit codes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ppplan.api.cli import app
from ppplan.partitioner.batch import BatchSearch
from ppplan.partitioner.bounds import optimistic
from ppplan.partitioner.costs import Costs
from ppplan.partitioner.plan import Plan
from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.search import PlanningError
from ppplan.partitioner.space import Setup, check_request, paged_kv_tokens
from ppplan.partitioner.validate import validate_plan
from ppplan.profiler.resolve import plan_request, resolve_inputs

DONE_WHEN = dict(
    model="llama-3.1-70b", gpus="8xH100", prompt_tokens=4000, output_tokens=1000, max_tpot_ms=30.0, max_ttft_ms=2000.0
)


def _plan(**kw: object) -> Plan:
    plan = plan_request(PlanRequest(**kw))  # type: ignore[arg-type]
    assert not validate_plan(plan.model_dump(mode="json"))
    return plan


def test_no_concurrency_finds_the_batch_within_the_slos() -> None:
    p = _plan(**DONE_WHEN)
    assert p.metrics.slo_met and p.metrics.tpot_ms <= 30 and p.metrics.ttft_p90_ms is not None
    assert p.metrics.ttft_p90_ms <= 2000 and p.metrics.ttft_p90_ms >= p.metrics.ttft_ms
    assert p.workload.concurrency_source == "searched" and p.workload.concurrency > 1
    assert len(p.pareto) >= 3
    chosen = [c for c in p.pareto if c.chosen]
    assert len(chosen) == 1 and chosen[0].tpot_ms == pytest.approx(p.metrics.tpot_ms)
    for c in p.pareto:
        assert c.tokens_per_s_per_user == pytest.approx(1000 / c.tpot_ms)
        assert c.degrees.gpus_used == c.degrees.tp * c.degrees.pp * c.degrees.replicas
    # the batch is the largest that meets the SLOs: one more sequence per micro-batch misses them
    req = PlanRequest(**DONE_WHEN)  # type: ignore[arg-type]
    prof, _ = resolve_inputs(req)
    setup = Setup.of(req, prof)
    check_request(req, prof, setup)
    costs = Costs(req, prof, setup)
    bs = BatchSearch(costs, optimistic)
    d = (p.degrees.tp, p.degrees.pp, p.degrees.replicas)
    b = p.degrees.micro_batch_size
    assert bs.exact(d, b).slo_met
    assert not bs.exact(d, b + 1).slo_met


def test_batch_search_is_exact_against_enumeration() -> None:
    """For every degrees of a small case, the chosen batch is the largest meeting the SLOs (largest
    mode) or the smallest sustaining the rate (smallest mode), checked by solving every batch."""
    for extra in ({"max_tpot_ms": 12.0}, {"request_rate": 40.0, "max_ttft_ms": 400.0}):
        req = PlanRequest(model="llama-3.1-8b", gpus="4xH100", prompt_tokens=1000, output_tokens=200, **extra)
        prof, _ = resolve_inputs(req)
        setup = Setup.of(req, prof)
        tps = check_request(req, prof, setup)
        costs = Costs(req, prof, setup)
        bs = BatchSearch(costs, optimistic)
        for d in [(t, p, 1) for t in tps for p in (1, 2) if t * p <= 4]:
            b_opt, _ = bs.optimistic_choice(d)
            got = bs.refine(bs.exact_choice(d, b_opt))
            top = bs.max_b(d)
            ok = [b for b in range(1, top + 1) if bs.exact(d, b).slo_met and bs.exact(d, b).feasible]
            if not ok:
                assert not got.slo_met
                continue
            want = max(ok) if bs.mode == "largest" else min(ok)
            assert got.layout.micro_batch_size == want, (d, extra)


def test_objectives_pick_what_they_say() -> None:
    base = dict(model="llama-3.1-8b", gpus="8xH100", prompt_tokens=2000, output_tokens=400)
    thr = _plan(**base, max_tpot_ms=40.0)
    lat = _plan(**base, objective="latency")
    assert lat.degrees.micro_batch_size == 1 and lat.metrics.tpot_ms < thr.metrics.tpot_ms
    assert thr.metrics.throughput_per_gpu > lat.metrics.throughput_per_gpu
    # min-gpus with a rate: the fewest GPUs that sustain it within the SLOs, at the rate given
    few = _plan(**base, objective="min-gpus", request_rate=2.0, max_tpot_ms=40.0)
    assert few.degrees.gpus_used < 8 and few.metrics.slo_met
    assert few.workload.request_rate == pytest.approx(2.0) and few.workload.request_rate_source == "given"
    assert few.metrics.throughput_tokens_per_s == pytest.approx(2.0 * 400)
    more = _plan(**base, objective="min-gpus", request_rate=40.0, max_tpot_ms=40.0)
    assert more.degrees.gpus_used > few.degrees.gpus_used
    # an output rate is a request rate times the output length
    same = _plan(**base, objective="min-gpus", output_rate=800.0, max_tpot_ms=40.0)
    assert same.degrees == few.degrees


def test_min_gpus_at_2_requests_per_second_on_the_done_when_model() -> None:
    p = _plan(**{**DONE_WHEN, "objective": "min-gpus", "request_rate": 1.0})
    assert p.degrees.gpus_used < 8 and p.metrics.slo_met


def test_an_slo_nothing_meets_names_the_best_value_and_the_knobs() -> None:
    with pytest.raises(PlanningError) as info:
        plan_request(PlanRequest(**{**DONE_WHEN, "max_tpot_ms": 2.0}))  # type: ignore[arg-type]
    err = info.value
    assert err.field == "slo"
    assert "TPOT ≤ 2 ms: the best reached is" in str(err) and "more GPUs" in str(err)
    assert err.details["best_tpot_ms"] > 2.0
    with pytest.raises(PlanningError) as info:
        plan_request(PlanRequest(**{**DONE_WHEN, "request_rate": 1000.0}))  # type: ignore[arg-type]
    assert "request rate 1000/s: the most any configuration sustains is" in str(info.value)


def test_pareto_is_non_dominated_and_spans_batches() -> None:
    p = _plan(model="llama-3.1-70b", gpus="16xH100")
    pts = [(c.tpot_ms, c.throughput_per_gpu) for c in p.pareto]
    for a in pts:
        for b in pts:
            assert not (b[0] <= a[0] and b[1] >= a[1] and b != a)
    assert len({c.degrees.micro_batch_size for c in p.pareto}) >= 3
    assert p.candidates and all(c.degrees.gpus_used >= 1 for c in [*p.candidates, *p.runner_ups])


def test_distributions_size_the_kv_cache_and_max_model_len() -> None:
    fixed = _plan(model="llama-3.1-8b", gpus="1xH100", prompt_tokens=2000, output_tokens=500, concurrency=8)
    spread = _plan(
        model="llama-3.1-8b",
        gpus="1xH100",
        prompt_tokens=2000,
        output_tokens=500,
        prompt_tokens_sd=500.0,
        concurrency=8,
    )
    assert fixed.workload.context == 2500 and spread.workload.context == 2500 + 1500
    # paged KV: the mean sequence (prompt + half the output) with the margin, in vLLM's 16-token blocks
    assert fixed.workload.kv_tokens_per_sequence == paged_kv_tokens(2250, "vllm") == 2480
    assert paged_kv_tokens(2250, "sglang") == 2475
    hist = _plan(
        model="llama-3.1-8b",
        gpus="1xH100",
        prompt_tokens_histogram=((1000, 3.0), (8000, 1.0)),
        output_tokens=500,
        concurrency=8,
    )
    assert hist.workload.prompt_tokens == round((3 * 1000 + 8000) / 4) and hist.workload.context == 8500


def test_old_plans_still_load() -> None:
    p = _plan(model="tiny-llama", gpus="2xH100", concurrency=4).model_dump(mode="json")
    old = json.loads(json.dumps(p))
    for key in ("schema_minor", "candidates", "units"):
        old.pop(key)
    for key in ("concurrency_source", "kv_tokens_per_sequence", "token_budget", "request_rate"):
        old["workload"].pop(key)
    for key in ("ttft_p50_ms", "ttft_p90_ms", "tokens_per_s_per_user"):
        old["metrics"].pop(key)
    for c in old["pareto"]:
        c.pop("tokens_per_s_per_user")
        c.pop("chosen")
    loaded = Plan.model_validate(old)
    assert loaded.schema_minor == 0 and loaded.metrics.ttft_p90_ms is None
    assert not validate_plan(old)


def test_units_and_baseline_stages_for_the_charts() -> None:
    p = _plan(model="llama-3.1-8b", gpus="4xH100", tp=1, pp=4, concurrency=64)
    assert len(p.units) == 34 and p.units[0].kind == "embed" and p.units[-1].kind == "head"
    assert [u.stage for u in p.units] == sorted(u.stage for u in p.units)
    for s in p.stages:
        mine = [u for u in p.units if u.stage == s.index]
        assert math.isclose(sum(u.weights_gib for u in mine), s.memory.weights_gib, rel_tol=1e-9)
    for b in p.baselines:
        assert len(b.stages) == 4


runner = CliRunner()


def test_cli_prints_the_batch_the_defaults_and_fits_100_columns() -> None:
    res = runner.invoke(app, ["plan", "llama-3.1-8b", "--gpus", "4xH100", "--no-save"])
    assert res.exit_code == 0, res.output
    assert "defaults used: --prompt-tokens 2048 --output-tokens 512" in res.output
    assert "sequences per replica (searched)" in res.output
    assert max(len(line) for line in res.output.splitlines()) <= 100
    wide = runner.invoke(app, ["plan", "llama-3.1-8b", "--gpus", "4xH100", "--no-save", "--wide"])
    assert wide.exit_code == 0 and "KV tokens" in wide.output


def test_cli_exit_codes_for_slos(tmp_path: Path) -> None:
    base = ["plan", "llama-3.1-70b", "--gpus", "8xH100", "--no-save", "--prompt-tokens", "4000±500"]
    res = runner.invoke(app, [*base, "--output-tokens", "1000", "--max-tpot-ms", "30", "--max-ttft-ms", "2000"])
    assert res.exit_code == 0, res.output
    assert "prompt 4000±500 tok" in res.output and "SLO met" in res.output
    miss = runner.invoke(app, [*base, "--max-tpot-ms", "2"])
    assert miss.exit_code == 2 and "the best reached is" in miss.output
    pinned = runner.invoke(app, [*base, "--max-tpot-ms", "2", "--concurrency", "64"])
    assert pinned.exit_code == 3 and "SLO MISSED" in pinned.output
    bad = runner.invoke(app, [*base, "--output-tokens", "lots"])
    assert bad.exit_code == 2 and "output_tokens" in bad.output
    wl = tmp_path / "w.json"
    wl.write_text(json.dumps({"prompt_tokens": {"histogram": [[1000, 1], [3000, 1]]}, "output_tokens": 200}))
    res = runner.invoke(app, ["plan", "llama-3.1-8b", "--gpus", "2xH100", "--no-save", "--workload", str(wl)])
    assert res.exit_code == 0, res.output
    assert "prompt 2000" in res.output


def test_the_api_takes_the_same_fields(client) -> None:  # type: ignore[no-untyped-def]
    body = {k: v for k, v in DONE_WHEN.items()}
    r = client.post("/v1/plans", json=body)
    assert r.status_code == 201, r.text
    plan = r.json()["plan"] if "plan" in r.json() else r.json()
    assert plan["workload"]["concurrency_source"] == "searched" and len(plan["pareto"]) >= 3
    assert plan["metrics"]["tpot_ms"] <= 30 and plan["metrics"]["ttft_p90_ms"] <= 2000
    r = client.post("/v1/plans", json={**body, "objective": "min-gpus", "request_rate": 1.0})
    assert r.status_code == 201, r.text
    r = client.post("/v1/plans", json={**body, "max_tpot_ms": 1})
    assert r.status_code == 422
    err = r.json()["detail"][0]
    assert err["field"] == "slo" and "the best reached is" in err["message"]


def test_a_config_sent_in_the_body_is_planned(client) -> None:  # type: ignore[no-untyped-def]
    from ppplan.profiler.configs import load_model_config

    raw = {**load_model_config("tiny-llama").raw, "_name_or_path": "acme/tiny"}
    r = client.post("/v1/plans", json={"model": "tiny", "gpus": "2xH100", "hf_config": raw})
    assert r.status_code == 201, r.text
    plan = r.json()["plan"]
    assert plan["model_source"].startswith("inline:") and "acme/tiny" in plan["exports"]["vllm"]["command"]
    bad = client.post("/v1/plans", json={"model": "./x", "gpus": "2xH100", "hf_config": raw})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "model"
    bad = client.post("/v1/plans", json={"model": "tiny", "gpus": "2xH100", "hf_config": {"layers": 3}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "hf_config"

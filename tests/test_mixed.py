"""``ppplan plan`` on mixed clusters: one pipeline over several GPU kinds, its exact placement and cut,
the engines' even cut on the same stages, the cluster file, SLOs and clear errors."""

from __future__ import annotations

import functools
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ppplan.api.cli import app
from ppplan.core.errors import PpplanError
from ppplan.partitioner.hetero import evaluate_hetero_cut
from ppplan.partitioner.mixed_costs import MixedCosts
from ppplan.partitioner.plan import Plan
from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.space import layout_of
from ppplan.partitioner.validate import validate_plan
from ppplan.profiler.resolve import plan_request, resolve_inputs

runner = CliRunner()
H100, A100 = "H100-SXM-80GB", "A100-80GB"


@functools.cache
def _plan(**kw: Any) -> dict[str, Any]:
    return plan_request(PlanRequest(**kw)).model_dump(mode="json")


def _70b() -> dict[str, Any]:
    return _plan(model="llama-3.1-70b", gpus="8xH100+8xA100-80GB", nodes=2)


def test_70b_pipeline_over_h100_and_a100() -> None:
    """The issue's case: both nodes, H100 stages hold more layers, exports per node, even cut shown."""
    d = _70b()
    assert validate_plan(d) == []
    stages = d["stages"]
    assert {s["node"] for s in stages} == {0, 1}
    by_gpu = {g: [s["num_decoder_layers"] for s in stages if s["gpu"] == g] for g in (H100, A100)}
    assert by_gpu[H100] and by_gpu[A100] and min(by_gpu[H100]) > max(by_gpu[A100])
    # node 0 is the H100 node (cluster order), node 1 the A100 one; devices follow the groups' order
    for s in stages:
        assert (s["node"] == 0) == (s["gpu"] == H100)
        assert all(g // 8 == s["node"] for g in s["devices"]) and len(s["devices"]) == d["degrees"]["tp"]
        assert s["memory"]["total_gib"] <= s["memory"]["limit_gib"]
    assert [g["gpu"] for g in d["cluster"]["groups"]] == [H100, A100]
    assert sum(g["stages"] for g in d["cluster"]["groups"]) == d["degrees"]["pp"]
    assert d["degrees"]["replicas"] == 1 and d["degrees"]["gpus_used"] <= 16
    # the exports name which node runs which stages, in pipeline order
    for eng in ("vllm", "sglang"):
        per_node = d["exports"][eng]["per_node"]
        assert sorted(k for e in per_node for k in e["stages"]) == list(range(d["degrees"]["pp"]))
        assert per_node[0]["stages"][0] == 0 and per_node[0]["node_rank"] == 0
        for e in per_node:
            assert {stages[k]["node"] for k in e["stages"]} == {e["node"]} and e["gpu"] == stages[e["stages"][0]]["gpu"]
    # the engines' even cut on the same stages: shown, and either out of memory or slower
    vllm = next(b for b in d["baselines"] if b["engine"] == "vllm")
    pp = d["degrees"]["pp"]
    assert sum(vllm["partition"]) == 80 and max(vllm["partition"]) - min(vllm["partition"]) <= 1
    assert len(vllm["partition"]) == pp
    assert (not vllm["feasible"] and vllm["reason"]) or vllm["throughput_gain"] > 0.05
    assert any("even cut" in n for n in d["notes"]) and any("idle" in n for n in d["notes"])
    assert "hetero-exact" in d["provenance"]["solver"] and d["provenance"]["optimal"]
    Plan.model_validate(d)


def test_cli_cluster_file(tmp_path: Path) -> None:
    """``--cluster FILE``: host names reach the exports; the network of the file is used."""
    f = tmp_path / "cluster.json"
    f.write_text(
        json.dumps(
            {
                "nodes": [
                    {"gpu": "H100", "count": 8, "host": "h100-a"},
                    {"gpu": "A100-80GB", "count": 8, "host": "a100-a"},
                ],
                "network": {"kind": "ib-400g"},
            }
        )
    )
    out = tmp_path / "plan.json"
    res = runner.invoke(app, ["plan", "llama-3.1-70b", "--cluster", str(f), "--no-save", "--json", str(out)])
    assert res.exit_code == 0, res.stdout + res.stderr
    d = json.loads(out.read_text())
    assert validate_plan(d) == []
    assert d["request"]["cluster"]["network"] == {"kind": "ib-400g"}
    assert d["cluster"]["network_gbps"] == pytest.approx(50.0)
    assert [g.get("hosts") for g in d["cluster"]["groups"]] == [["h100-a"], ["a100-a"]]
    head = d["exports"]["vllm"]["per_node"][0]
    host = "h100-a" if head["gpu"] == H100 else "a100-a"
    assert all(host in e["command"] for e in d["exports"]["vllm"]["per_node"])
    res = runner.invoke(app, ["plan", "llama-3.1-70b", "--cluster", str(f), "--nodes", "2", "--no-save"])
    assert res.exit_code == 2 and "nodes" in res.stdout + res.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{nodes: [")
    res = runner.invoke(app, ["plan", "llama-3.1-70b", "--cluster", str(bad), "--no-save"])
    assert res.exit_code == 2 and "cluster" in res.stdout + res.stderr and "Traceback" not in res.stdout


def test_slo_bounds_the_mixed_plan() -> None:
    free = _70b()
    slo = free["metrics"]["tpot_ms"] / 2
    d = _plan(model="llama-3.1-70b", gpus="8xH100+8xA100-80GB", nodes=2, max_tpot_ms=slo)
    assert validate_plan(d) == []
    assert d["metrics"]["slo_met"] and d["metrics"]["tpot_ms"] <= slo
    assert d["metrics"]["throughput_tokens_per_s"] < free["metrics"]["throughput_tokens_per_s"]
    with pytest.raises(PpplanError) as err:
        plan_request(PlanRequest(model="llama-3.1-70b", gpus="8xH100+8xA100-80GB", nodes=2, max_tpot_ms=0.5))
    assert err.value.field == "slo"


def test_request_rate_and_latency_objectives() -> None:
    rate = _plan(model="llama-3.1-8b", gpus="2xH100+2xA100-80GB", request_rate=2.0)
    lat = _plan(model="llama-3.1-8b", gpus="2xH100+2xA100-80GB", objective="latency")
    for d in (rate, lat):
        assert validate_plan(d) == [] and d["metrics"]["slo_met"]
    assert rate["workload"]["request_rate"] == pytest.approx(2.0)
    assert lat["degrees"]["micro_batch_size"] == 1


def test_infeasible_mixed_cluster() -> None:
    with pytest.raises(PpplanError) as err:
        plan_request(PlanRequest(model="llama-3.1-405b", gpus="1xH100+1xA100-80GB"))
    assert err.value.field == "gpus" and "no pipeline over" in str(err.value) and "GiB" in str(err.value)
    with pytest.raises(PpplanError) as err:
        plan_request(PlanRequest(model="llama-3.1-70b", gpus="8xH100+8xA100-80GB", nodes=2, tp=3))
    assert err.value.field == "tp"


def _brute(costs: MixedCosts, tp: int, pp: int, sequences: int) -> float:
    """The smallest bottleneck over every group order, stage counts and cut (no solver)."""
    lay = layout_of(tp, pp, 1, sequences)
    pr = costs.hetero_problem(lay)
    n, k, best = pr.layers, len(pr.groups), math.inf
    for r in range(1, k + 1):
        for order in itertools.permutations(range(k), r):
            caps = [pr.groups[g].max_stages for g in order]
            for counts in itertools.product(*(range(1, c + 1) for c in caps)):
                if sum(counts) != pp:
                    continue
                for bounds in itertools.combinations(range(1, n), pp - 1):
                    ends = [0, *bounds, n]
                    sizes = [ends[i + 1] - ends[i] for i in range(pp)]
                    cut = evaluate_hetero_cut(pr, order, counts, sizes)
                    if cut.fits:
                        best = min(best, cut.bottleneck)
    return best


@pytest.mark.parametrize("pp", [2, 3, 4])
def test_cut_equals_brute_force(pp: int) -> None:
    """tiny-llama on two GPU kinds: the plan's slowest stage is the smallest over all placements."""
    req = PlanRequest(model="tiny-llama", gpus="2xH100+2xA100-80GB", tp=1, pp=pp, concurrency=8)
    prof, _ = resolve_inputs(req)
    d = plan_request(req).model_dump(mode="json")
    assert validate_plan(d) == []
    lay = layout_of(1, pp, 1, 8)
    brute = _brute(MixedCosts(req, prof, req.cluster_spec), 1, pp, lay.sequences)
    got = d["schedule"]["cycle_ms"] / 1e3 / max(d["degrees"]["micro_batches"], pp)
    assert got == pytest.approx(brute, rel=1e-9)
    assert max(s["times"]["busy_ms"] for s in d["stages"]) / 1e3 == pytest.approx(brute, rel=1e-9)


def test_cpsat_re_solves_the_chosen_placement() -> None:
    kw: dict[str, Any] = {"model": "tiny-llama", "gpus": "2xH100+2xA100-80GB", "tp": 1, "pp": 3, "concurrency": 8}
    dp, cp = _plan(**kw), _plan(**kw, solver="cpsat")
    assert "cp-sat" in cp["provenance"]["solver"] and validate_plan(cp) == []
    assert cp["schedule"]["cycle_ms"] == pytest.approx(dp["schedule"]["cycle_ms"], rel=1e-6)


def test_the_readme_cluster_example_plans() -> None:
    """The README's ``--cluster examples/cluster.json`` runs as printed."""
    example = Path(__file__).resolve().parents[1] / "examples" / "cluster.json"
    res = runner.invoke(app, ["plan", "llama-3.1-70b", "--cluster", str(example), "--no-save", "--export", "vllm"])
    assert res.exit_code == 0, res.stdout + res.stderr
    assert "--master-addr a100-node-0" in res.stdout or "--master-addr h100-node-0" in res.stdout

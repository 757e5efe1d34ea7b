"""Expert-parallel layouts in ``ppplan plan``: the EP families are searched beside the dense layouts for
MoE models, their per-GPU memory is ExpertModel's, the chosen plan says which layout won and what each
family reaches (KV capacity included), pins (``--ep``, ``--tp``) are respected, dense models are
unchanged."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from ppplan.api.cli import app
from ppplan.core.errors import PpplanError
from ppplan.partitioner.batch import BatchSearch
from ppplan.partitioner.bounds import (
    RUNNER_UPS,
    Search,
    branch_and_bound,
    merge_fronts,
    optimistic,
    pareto,
    pareto_families,
    rank_key,
)
from ppplan.partitioner.costs import Costs
from ppplan.partitioner.expert import ExpertDegrees, ExpertModel
from ppplan.partitioner.expert_costs import ExpertCosts, expert_families, routed_free
from ppplan.partitioner.plan import Plan
from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.space import GIB, Setup, check_request, degrees
from ppplan.partitioner.validate import validate_plan
from ppplan.profiler.resolve import plan_request, resolve_inputs

DEEPSEEK = PlanRequest(model="deepseek-v3", gpus="16xH200", nodes=2, weight_dtype="fp8")
KIMI = PlanRequest(model="kimi-k2", gpus="8xH100", weight_dtype="int4")


@pytest.fixture(scope="module")
def deepseek() -> Plan:
    return plan_request(DEEPSEEK)


@pytest.fixture(scope="module")
def kimi() -> Plan:
    return plan_request(KIMI)


def _compared(plan: Plan) -> str:
    notes = [n for n in plan.notes if n.startswith("layouts compared: ")]
    assert len(notes) == 1, plan.notes
    return notes[0]


def _check_memory(plan: Plan, req: PlanRequest) -> None:
    """Each stage's weight and KV bytes per GPU are ExpertModel's counts over the stage's units."""
    d = plan.degrees
    deg = ExpertDegrees(tp=d.tp, attention_dp=d.attention_dp, ep=d.ep)
    profile, _ = resolve_inputs(req)
    em = ExpertModel(profile, imbalance=req.expert_imbalance or 1.5)
    w = em.weight_bytes_per_gpu(deg)
    kv_tokens = plan.workload.kv_tokens_per_sequence
    assert kv_tokens is not None
    kv = em.kv_bytes_per_gpu(deg, plan.workload.concurrency // d.replicas, kv_tokens)
    for s in plan.stages:
        units = slice(s.units[0], s.units[1] + 1)
        assert s.memory.weights_gib * GIB == pytest.approx(float(w[units].sum()), rel=1e-12)
        assert s.memory.kv_cache_gib * GIB == pytest.approx(float(kv[units].sum()), rel=1e-12)
        assert len(s.devices) == deg.gpus and s.memory.total_gib <= s.memory.limit_gib


def test_deepseek_v3_two_h200_nodes_searches_ep(deepseek: Plan) -> None:
    d = deepseek.degrees
    note = _compared(deepseek)
    # the dense family and EP layouts over 2, 4 and 8 GPUs per stage were all searched and reported
    assert note.count("(chosen)") == 1 and "TP: TP" in note
    for ep in (2, 4, 8):
        assert f"+ EP {ep}:" in note
    assert d.ep == 8 and d.attention_dp > 1  # DP attention + EP8 wins on two H200 nodes
    assert d.tp * d.attention_dp * d.pp * d.replicas == d.gpus_used == 16
    chosen = f"DP-attention {d.attention_dp} + EP {d.ep}: TP{d.tp}×PP{d.pp}×{d.replicas}"
    assert f"{chosen} {deepseek.metrics.throughput_per_gpu:,.0f} tok/s/GPU" in note
    assert note.split(chosen)[1].split(";")[0].endswith("(chosen)")
    _check_memory(deepseek, DEEPSEEK)
    assert validate_plan(deepseek.model_dump(mode="json")) == []


def _per_gpu(note: str) -> dict[str, float]:
    """Family label → its best throughput per GPU, from the comparison note."""
    out = {}
    for part in note.removeprefix("layouts compared: ").split("; "):
        label, rest = part.split(": ", 1)
        out[label] = float(rest.split(" tok/s/GPU")[0].split()[-1].replace(",", ""))
    return out


def test_kimi_k2_dp_attention_ep8_against_tp4_pp2(kimi: Plan) -> None:
    note = _compared(kimi)
    figures = _per_gpu(note)
    # the best family wins, and the note gives the KV capacity of each
    assert max(figures.values()) == pytest.approx(kimi.metrics.throughput_per_gpu, abs=0.5)
    assert note.count("KV ") == len(figures) and "DP-attention 4 + EP 8" in figures
    d = kimi.degrees
    assert d.ep == 8 and d.attention_dp > 1 and d.tp * d.attention_dp == 8
    # TP4×PP2 with experts split by TP (the dense layout the issue compares against): fits, but is slower and
    # its MLA cache, replicated on every TP rank, holds fewer tokens per GPU than DP attention's
    tp4 = plan_request(KIMI.model_copy(update={"tp": 4, "pp": 2, "ep": 1}))
    assert (tp4.degrees.tp, tp4.degrees.pp, tp4.degrees.ep) == (4, 2, 1)
    assert kimi.metrics.throughput_per_gpu > tp4.metrics.throughput_per_gpu
    assert tp4.metrics.kv_capacity_tokens > 0 and kimi.metrics.kv_capacity_tokens > 0
    # MLA: one DP rank's sequences are not replicated over the stage's 8 GPUs, TP attention's are
    ep_tp8 = plan_request(KIMI.model_copy(update={"tp": 8, "ep": 8}))
    assert ep_tp8.degrees.attention_dp == 1
    assert kimi.metrics.kv_capacity_tokens > 1.5 * ep_tp8.metrics.kv_capacity_tokens
    _check_memory(kimi, KIMI)
    assert validate_plan(kimi.model_dump(mode="json")) == []


def test_ep_pin_and_attention_tp_pin() -> None:
    plan = plan_request(KIMI.model_copy(update={"ep": 4}))
    assert plan.degrees.ep == 4 and plan.degrees.tp * plan.degrees.attention_dp == 4
    assert "TP: " not in _compared(plan)  # a pinned EP above 1 leaves out the dense layouts
    plan = plan_request(KIMI.model_copy(update={"tp": 2, "ep": 8}))
    assert (plan.degrees.tp, plan.degrees.attention_dp, plan.degrees.ep) == (2, 4, 8)
    with pytest.raises(PpplanError) as err:
        plan_request(KIMI.model_copy(update={"ep": 3}))
    assert err.value.field == "ep" and "384 routed experts" in str(err.value)
    with pytest.raises(PpplanError) as err:
        plan_request(PlanRequest(model="llama-3.1-8b", gpus="8xH100", ep=2))
    assert err.value.field == "ep" and "no routed experts" in str(err.value)


def test_dense_models_have_no_ep_family() -> None:
    req = PlanRequest(model="llama-3.1-8b", gpus="8xH100")
    profile, _ = resolve_inputs(req)
    assert expert_families(req, profile, Setup.of(req, profile)) == []
    plan = plan_request(req)
    assert plan.degrees.ep == 1 and plan.degrees.attention_dp == 1
    assert not any(n.startswith("layouts compared") for n in plan.notes)


def test_ep_one_disables_expert_parallelism() -> None:
    req = KIMI.model_copy(update={"ep": 1})
    profile, _ = resolve_inputs(req)
    assert expert_families(req, profile, Setup.of(req, profile)) == []
    plan = plan_request(req)
    assert plan.degrees.ep == 1 and not any(n.startswith("layouts compared") for n in plan.notes)


def test_families_are_ep_over_whole_stages_within_a_node() -> None:
    profile, _ = resolve_inputs(DEEPSEEK)
    setup = Setup.of(DEEPSEEK, profile)
    fams = expert_families(DEEPSEEK, profile, setup)
    degs = [(c.deg.tp, c.deg.attention_dp, c.deg.ep) for c, _ in fams if isinstance(c, ExpertCosts)]
    assert len(degs) == len(fams) and all(t == [c.deg.gpus] for c, t in fams if isinstance(c, ExpertCosts))
    assert sorted(degs) == sorted(
        (t, g // t, g) for g in (2, 4, 8) for t in (1, 2, 4, 8) if g % t == 0
    )  # attention TP × DP = EP = the stage's GPUs, at most one node of 8
    req = DEEPSEEK.model_copy(update={"tp": 4})
    assert {c.deg.tp for c, _ in expert_families(req, profile, setup) if isinstance(c, ExpertCosts)} == {4}


def test_expert_costs_hooks() -> None:
    profile, _ = resolve_inputs(KIMI)
    setup = Setup.of(KIMI, profile)
    deg = ExpertDegrees(tp=2, attention_dp=4, ep=8)
    c = ExpertCosts(KIMI, profile, setup, deg)
    em = ExpertModel(profile)
    # KV per sequence averages the DP ranks; the fullest rank holds ⌈sequences / dp⌉
    assert np.allclose(c.kv_per_sequence(8) * 4, em.kv_bytes_per_gpu(deg, 4, setup.kv_tokens))
    assert np.allclose(c.kv_bytes(8, 9), em.kv_bytes_per_gpu(deg, 12, setup.kv_tokens))
    lay = c.make_layout(8, 1, 1, 16)
    assert (lay.tp, lay.ep, lay.attention_dp) == (8, 8, 4)
    with pytest.raises(ValueError):
        c.decode(4, 16)
    # the all-to-all is part of every MoE layer's decode step and of nothing else
    moe = em.is_moe
    a2a = em.alltoall_time(deg, 4, c.links)
    assert np.all(a2a[moe] > 0) and np.all(a2a[~moe] == 0)
    assert np.all(c.decode(8, 16)[moe] > a2a[moe])
    # a higher imbalance slows the routed experts and the all-to-all, nothing else
    worse = ExpertCosts(KIMI.model_copy(update={"expert_imbalance": 3.0}), profile, setup, deg)
    assert np.all(worse.decode(8, 64)[moe] > c.decode(8, 64)[moe])
    assert np.allclose(worse.decode(8, 64)[~moe], c.decode(8, 64)[~moe])
    # the routed-free twin keeps everything but the routed experts, and attention's all-reduce only
    twin = routed_free(profile)
    for u, v in zip(profile.units, twin.units, strict=True):
        assert v.weight_bytes == u.weight_bytes - u.expert_weight_bytes and v.num_experts == 0
        assert v.tp_allreduces == (min(u.tp_allreduces, 1) if u.num_experts else u.tp_allreduces)
    assert math.isclose(worse.em.imbalance, 3.0)


def test_cli_ep_options(tmp_path) -> None:
    runner = CliRunner()
    out = tmp_path / "plan.json"
    base = ["plan", "kimi-k2", "--gpus", "8xH100", "--weight-dtype", "int4", "--no-save"]
    res = runner.invoke(app, [*base, "--ep", "8", "--expert-imbalance", "1.2", "--json", str(out)])
    assert res.exit_code == 0, res.stdout
    data = json.loads(out.read_text())
    assert data["degrees"]["ep"] == 8 and data["request"]["expert_imbalance"] == 1.2
    assert validate_plan(data) == []
    res = runner.invoke(app, [*base, "--ep", "1", "--json", str(out)])
    assert res.exit_code == 0, res.stdout
    assert json.loads(out.read_text())["degrees"]["ep"] == 1
    res = runner.invoke(app, [*base, "--expert-imbalance", "0.5"])
    assert res.exit_code == 2 and "expert_imbalance" in res.stdout + res.stderr


def test_pruning_across_families_keeps_the_best_and_the_front() -> None:
    """The floor from earlier families and the common Pareto front change no figure a plan shows."""
    profile, _ = resolve_inputs(DEEPSEEK)
    setup = Setup.of(DEEPSEEK, profile)
    tps = check_request(DEEPSEEK, profile, setup)
    fams = [(Costs(DEEPSEEK, profile, setup), tps), *expert_families(DEEPSEEK, profile, setup)]

    def search(floored: bool) -> list[tuple[Costs, list, BatchSearch, Search]]:
        out: list[tuple[Costs, list, BatchSearch, Search]] = []
        for costs, t in fams:
            degs = list(degrees(DEEPSEEK, setup, t))
            batches = BatchSearch(costs, optimistic)
            keys = sorted((rank_key(DEEPSEEK, e) for *_, s in out for e in s.evaluations), reverse=True)
            floor = keys[RUNNER_UPS] if floored and len(keys) > RUNNER_UPS else None
            out.append((costs, degs, batches, branch_and_bound(costs, degs, batches, floor)))
        return out

    full, pruned = search(False), search(True)
    best = lambda runs: max((rank_key(DEEPSEEK, e) for *_, s in runs for e in s.evaluations))  # noqa: E731
    assert best(full) == best(pruned)
    assert sum(len(b.exact_evaluations) for _, _, b, _ in pruned) < sum(len(b.exact_evaluations) for _, _, b, _ in full)
    assert all(s.evaluations for *_, s in pruned)  # every family still reports its best
    one = merge_fronts([pareto(c, d, b, []) for c, d, b, _ in full])
    common = merge_fronts(pareto_families([(c, d, b, []) for c, d, b, _ in full]))
    assert [(e.tpot, e.per_gpu) for e in one] == pytest.approx([(e.tpot, e.per_gpu) for e in common])

"""Executor layouts beyond TP × PP: expert parallelism (tiny-moe, all-to-all over gloo) and a
mixed-speed pipeline (one rank slowed, the planner's cut for stage speeds); logits checked against
the unsplit model as in every run."""

from __future__ import annotations

import pytest

from ppplan.executor.recut import recut, speed_cut
from ppplan.executor.run import expert_degree, run_plan
from ppplan.executor.spec import ExecutorError
from ppplan.partitioner.request import PlanRequest
from ppplan.profiler.resolve import plan_request


def _plan(model: str, prompt: int, output: int, concurrency: int) -> dict:
    req = PlanRequest(
        model=model, gpus="2xCPU", pp=2, tp=1, prompt_tokens=prompt, output_tokens=output, concurrency=concurrency
    )
    return plan_request(req).model_dump(mode="json")


def test_speed_cut_moves_layers_away_from_the_slow_stage() -> None:
    plan = _plan("tiny-llama", 32, 8, 8)
    assert speed_cut(plan, [1.0, 1.0]) == [2, 2]
    assert speed_cut(plan, [1.0, 3.0]) == [3, 1]
    assert speed_cut(plan, [3.0, 1.0]) == [1, 3]
    with pytest.raises(ExecutorError, match="one positive time multiplier per stage"):
        speed_cut(plan, [1.0])


def test_expert_degree_names_the_layouts_it_does_not_run() -> None:
    plan = _plan("tiny-moe", 8, 3, 8)
    notes: list[str] = []
    assert expert_degree(plan, 4, notes) == 1 and notes == []
    plan["degrees"].update(ep=2)
    assert expert_degree(plan, 4, notes) == 2 and "attention runs data-parallel" in notes[0]
    with pytest.raises(ExecutorError, match="split evenly over the 2 EP ranks"):
        expert_degree(plan, 3, [])
    plan["degrees"].update(attention_dp=4)
    with pytest.raises(ExecutorError, match="attention_dp"):
        expert_degree(plan, 4, [])
    plan["degrees"].update(attention_dp=2, tp=2)
    with pytest.raises(ExecutorError, match="TP 1"):
        expert_degree(plan, 4, [])


@pytest.mark.multiprocess
def test_ep2_inside_pp2_matches_the_unsplit_model() -> None:
    plan = _plan("tiny-moe", 8, 3, 8)
    plan["degrees"].update(ep=2, attention_dp=2)  # until the planner emits EP layouts
    report = run_plan(plan)
    assert report is not None and report["world_size"] == 4
    chk = report["check"]
    assert chk["passed"] and chk["tokens_equal"] and chk["logits_max_abs_diff"] <= 1e-4, chk
    # every micro-batch's sequences came back from both EP ranks, and tokens crossed ranks
    assert chk["tokens_total"] == plan["degrees"]["micro_batches"] * plan["degrees"]["micro_batch_size"] * 3
    ep = report["ep_dispatch"]
    assert 0 < ep["remote"] < ep["assignments"]
    assert any("2 of 4 routed experts each" in n for n in report["notes"])


@pytest.mark.multiprocess
def test_a_slow_rank_and_the_cut_for_its_speed() -> None:
    # long prompts: stage time grows with the layers it holds (short ones are per-forward overhead on CPU)
    plan = _plan("tiny-llama", 128, 4, 16)
    cut = speed_cut(plan, [1.0, 3.0])
    assert cut == [3, 1]
    report = run_plan(recut(plan, cut), slow_ranks={1: 3.0})
    assert report is not None and report["check"]["passed"] and report["check"]["tokens_equal"]
    pre = [s["measured"]["prefill_ms"] for s in report["stages"]]
    # evenly cut, the rank slowed 3× would take about 3× stage 0's prefill; moved to one layer, about as long
    assert pre[1] < 2.0 * pre[0], pre

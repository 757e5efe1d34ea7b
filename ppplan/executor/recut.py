"""Re-cut a plan: the same model and degrees with other decoder layers per stage.

``ppplan run PLAN --partition 1,3`` runs a cut of your choice (an engine's default, an uneven cut
for a test) with the plan's module-name contract. Stage times are re-predicted with the analytic
cost model at the plan's dtypes; memory figures are copied from the original stage of the same
index and flagged in ``notes`` (the executor does not use them).
"""

from __future__ import annotations

from typing import Any

from ppplan.core.costmodel import CostModel
from ppplan.core.gpus import get_gpu
from ppplan.executor.calibration import predict_stage_seconds, profile_for_plan
from ppplan.executor.spec import ExecutorError
from ppplan.partitioner.dp import solve_partition
from ppplan.partitioner.problem import PartitionProblem

__all__ = ["parse_partition", "recut", "speed_cut"]


def parse_partition(text: str) -> list[int]:
    """``"1,3"`` → ``[1, 3]``.

    Raises:
        ExecutorError: not a comma-separated list of positive integers.
    """
    try:
        sizes = [int(x) for x in text.split(",")]
    except ValueError:
        raise ExecutorError("partition", rule=f"{text!r} must be decoder layers per stage, e.g. 1,3") from None
    return sizes


def recut(plan: dict[str, Any], sizes: list[int]) -> dict[str, Any]:
    """``plan`` with ``sizes`` decoder layers per stage (same PP degree, same module names).

    Raises:
        ExecutorError: a count that is not PP, a stage without layers, sizes not summing to the
            model's layers.
    """
    stages = plan["stages"]
    pp, L = len(stages), int(plan["model"]["num_layers"])
    if len(sizes) != pp:
        raise ExecutorError("partition", rule=f"{len(sizes)} stage sizes given, the plan has PP {pp}")
    if any(s < 1 for s in sizes):
        raise ExecutorError("partition", rule=f"{sizes} has a stage without decoder layers (each needs at least 1)")
    if sum(sizes) != L:
        raise ExecutorError(
            "partition", rule=f"{sizes} sums to {sum(sizes)}, {plan['model']['name']} has {L} decoder layers"
        )
    modules = [m for s in stages for m in s["modules"]]
    embed, layers, head = modules[:1], modules[1 : 1 + L], modules[1 + L :]
    new = []
    first = 0
    for k, n in enumerate(sizes):
        last = first + n - 1
        mods = (embed if k == 0 else []) + layers[first : last + 1] + (head if k == pp - 1 else [])
        st = dict(stages[k])
        st.update(
            decoder_layers=[first, last],
            num_decoder_layers=n,
            modules=mods,
            units=[0 if k == 0 else first + 1, L + 1 if k == pp - 1 else last + 1],
        )
        new.append(st)
        first = last + 1
    out = dict(plan)
    out.update(stages=new, partition=list(sizes))
    prof = profile_for_plan(out)
    wl, b = plan["workload"], int(plan["degrees"]["micro_batch_size"])
    P, out_tokens = int(wl["prompt_tokens"]), int(wl["output_tokens"])
    dec = predict_stage_seconds(out, prof, phase="decode", tokens=b, context=P + out_tokens // 2)
    pre = predict_stage_seconds(out, prof, phase="prefill", tokens=P, context=P)
    for k, st in enumerate(new):
        t = dict(st["times"])
        t.update(
            decode_ms=dec[k] * 1e3,
            prefill_ms=pre[k] * 1e3,
            busy_ms=(dec[k] + b / out_tokens * pre[k]) * 1e3 + t.get("send_ms", 0.0),
            source=f"re-cut by the executor: analytic ({prof.label})",
        )
        st["times"] = t
    out["notes"] = [
        *plan.get("notes", []),
        f"re-cut to {sizes} by the executor (was {plan['partition']}); stage memory figures are the original cut's",
    ]
    return out


def _unit_decode_seconds(plan: dict[str, Any]) -> list[float]:
    """Decode seconds of each planning unit (embedding, layers, head) for one micro-batch: the plan's
    ``units[i].decode_ms`` when it lists them, else the analytic cost model at the plan's workload."""
    units = plan.get("units") or []
    L = int(plan["model"]["num_layers"])
    if len(units) == L + 2 and all("decode_ms" in u for u in units):
        return [float(u["decode_ms"]) / 1e3 for u in units]
    wl, b = plan["workload"], int(plan["degrees"]["micro_batch_size"])
    cm = CostModel(profile_for_plan(plan), get_gpu(plan["cluster"]["gpu"]))
    ctx = int(wl["prompt_tokens"]) + int(wl["output_tokens"]) // 2
    return [float(x) for x in cm.unit_times(1, "decode", b, ctx)]


def speed_cut(plan: dict[str, Any], speeds: list[float]) -> list[int]:
    """Decoder layers per stage that balance stages running at ``speeds`` (time multipliers, e.g.
    ``[1, 3]``: stage 1 takes three times as long for the same layers): the planner's exact DP
    (:func:`ppplan.partitioner.dp.solve_partition` with ``stage_speed``) over the plan's unit decode
    times, every stage keeping at least one decoder layer.

    Raises:
        ExecutorError: a speed per stage is not given, or fewer decoder layers than stages.
    """
    pp = len(plan["stages"])
    if len(speeds) != pp or not all(s > 0 for s in speeds):
        raise ExecutorError("stage_speed", speeds, rule=f"needs one positive time multiplier per stage ({pp})")
    t = _unit_decode_seconds(plan)
    # the embedding stays with the first decoder layer and the LM head with the last: every stage
    # keeps at least one decoder layer (the executor's contract), which the DP's units then guarantee
    layers = [*t[1:-1]]
    layers[0] += t[0]
    layers[-1] += t[-1]
    sol = solve_partition(PartitionProblem(time=tuple(layers), stages=pp, stage_speed=tuple(speeds)))
    if not sol.has_cut:
        raise ExecutorError("stage_speed", speeds, rule=f"no cut of the {len(layers)} decoder layers: {sol.status}")
    return list(sol.sizes)

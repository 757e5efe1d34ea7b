"""Re-cut a plan: the same model and degrees with other decoder layers per stage.

``ppplan run PLAN --partition 1,3`` runs a cut of your choice (an engine's default, an uneven cut
for a test) with the plan's module-name contract. Stage times are re-predicted with the analytic
cost model at the plan's dtypes; memory figures are copied from the original stage of the same
index and flagged in ``notes`` (the executor does not use them).
"""

from __future__ import annotations

from typing import Any

from ppplan.executor.calibration import predict_stage_seconds, profile_for_plan
from ppplan.executor.spec import ExecutorError

__all__ = ["parse_partition", "recut"]


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

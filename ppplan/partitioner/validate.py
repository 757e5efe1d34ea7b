"""One solver-independent consistency check of a Plan (JSON v1 as a dict).

Every plan the search returns, whatever solver cut it, must pass: the tests run it on the plans of
every solver, and a user can run it on a plan file they edited. It re-derives what can be derived
(partition sums, stage ranges, memory totals, the schedule formula, exports) instead of trusting it.
"""

from __future__ import annotations

import math
from typing import Any

from ppplan.core.errors import PpplanError
from ppplan.partitioner.problem import CutEvaluation, PartitionProblem, evaluate_cut

__all__ = ["validate_plan"]

_REL = 1e-6


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= _REL * max(1.0, abs(a), abs(b))


def _stage_cut(stages: list[dict[str, Any]]) -> CutEvaluation | str:
    """The plan's own stages as a cut (one unit per stage: busy ms, total and limit GiB), evaluated
    like any other cut; or why the stage entries cannot be one."""
    try:
        pr = PartitionProblem(
            time=tuple(float(s["times"]["busy_ms"]) for s in stages),
            stages=len(stages),
            memory=tuple(float(s["memory"]["total_gib"]) for s in stages),
            stage_memory_limit=tuple(float(s["memory"]["limit_gib"]) for s in stages),
        )
    except PpplanError as exc:
        return f"stages: {exc}"
    return evaluate_cut(pr, [1] * len(stages), rel_tol=_REL)


def validate_plan(plan: dict[str, Any]) -> list[str]:
    """Problems found in ``plan`` (a Plan as a JSON dict; empty when consistent), each naming the
    field and both values."""
    deg, part, stages = plan["degrees"], list(plan["partition"]), plan["stages"]
    layers = int(plan["model"]["num_layers"])
    out = [
        msg
        for ok, msg in (
            (sum(part) == layers, f"partition: sums to {sum(part)}, the model has {layers} decoder layers"),
            (
                len(part) == deg["pp"] == len(stages),
                f"partition: {len(part)} stages, degrees.pp {deg['pp']}, {len(stages)} stage entries",
            ),
            (all(n >= 1 for n in part), f"partition: {part} leaves a stage without a decoder layer"),
            (
                deg["tp"] * deg["pp"] * deg["replicas"] == deg["gpus_used"] <= plan["cluster"]["count"],
                f"degrees: tp × pp × replicas = {deg['tp'] * deg['pp'] * deg['replicas']}, "
                f"gpus_used {deg['gpus_used']}, cluster {plan['cluster']['count']}",
            ),
        )
        if not ok
    ]
    cut = _stage_cut(stages)
    if isinstance(cut, str):
        out.append(cut)
    out += _stage_problems(stages, part, layers, cut if isinstance(cut, CutEvaluation) else None)
    if isinstance(cut, CutEvaluation):
        out += _schedule_problems(plan, cut)
    out += _export_problems(plan, part, layers)
    return out


def _stage_problems(stages: list[dict[str, Any]], part: list[int], layers: int, cut: CutEvaluation | None) -> list[str]:
    """Each stage against the partition (layers, units, flags, modules) and its memory accounting."""
    out: list[str] = []
    first_layer, next_unit = 0, 0
    for k, s in enumerate(stages):
        n = part[k] if k < len(part) else 0
        expected = [first_layer, first_layer + n - 1]
        if list(s["decoder_layers"]) != expected:
            out.append(f"stages[{k}].decoder_layers: {s['decoder_layers']}, partition says {expected}")
        if s["units"][0] != next_unit:
            out.append(f"stages[{k}].units: starts at {s['units'][0]}, expected {next_unit}")
        if not (s["has_embedding"] == (k == 0) and s["has_lm_head"] == (k == len(stages) - 1)):
            out.append(f"stages[{k}]: embedding/head flags {s['has_embedding']}/{s['has_lm_head']}")
        out += _memory_problems(k, s["memory"], cut)
        found = sum(".layers." in m for m in s["modules"])
        if found != n:
            out.append(f"stages[{k}].modules: {found} decoder layers, partition says {n}")
        first_layer += n
        next_unit = s["units"][1] + 1
    if next_unit != layers + 2:
        out.append(f"stages: cover units 0..{next_unit - 1}, the model has {layers + 2}")
    return out


def _memory_problems(k: int, mem: dict[str, Any], cut: CutEvaluation | None) -> list[str]:
    out: list[str] = []
    parts = mem["weights_gib"] + mem["kv_cache_gib"] + mem["workspace_gib"] + mem["reserve_gib"]
    if not _close(parts, mem["total_gib"]):
        out.append(f"stages[{k}].memory: parts sum to {parts}, total {mem['total_gib']}")
    if cut is not None and not cut.stage_fits[k]:
        out.append(f"stages[{k}].memory: total {mem['total_gib']:.3f} GiB over the limit {mem['limit_gib']:.3f} GiB")
    if not _close(mem["limit_gib"] - mem["total_gib"], mem["free_gib"]):
        out.append(f"stages[{k}].memory: free {mem['free_gib']} ≠ limit − total")
    return out


def _schedule_problems(plan: dict[str, Any], cut: CutEvaluation) -> list[str]:
    """The schedule formula: cycle = max(M, PP) × slowest stage; TPOT = cycle; throughput from both."""
    deg, sched, m, stages = plan["degrees"], plan["schedule"], plan["metrics"], plan["stages"]
    out: list[str] = []
    cycle = max(deg["micro_batches"], deg["pp"]) * cut.bottleneck
    if not _close(cycle, sched["cycle_ms"]):
        out.append(f"schedule.cycle_ms: {sched['cycle_ms']}, max(M, PP) × slowest = {cycle}")
    if not _close(m["tpot_ms"], sched["cycle_ms"]):
        out.append(f"metrics.tpot_ms: {m['tpot_ms']}, cycle {sched['cycle_ms']}")
    per_replica = math.ceil(plan["workload"]["concurrency"] / deg["replicas"])
    if deg["micro_batches"] * deg["micro_batch_size"] < per_replica:
        out.append(
            f"degrees: {deg['micro_batches']} × {deg['micro_batch_size']} sequences hold fewer than {per_replica}"
        )
    thr = per_replica * deg["replicas"] / (sched["cycle_ms"] / 1e3)
    if not _close(thr, m["throughput_tokens_per_s"]):
        out.append(
            f"metrics.throughput_tokens_per_s: {m['throughput_tokens_per_s']}, sequences × replicas / cycle = {thr}"
        )
    if m["kv_capacity_tokens"] != min(s["kv_capacity_tokens"] for s in stages):
        out.append("metrics.kv_capacity_tokens: not the tightest stage's")
    return out


def _export_problems(plan: dict[str, Any], part: list[int], layers: int) -> list[str]:
    """The exports and the baselines against the partition."""
    out: list[str] = []
    ex, joined = plan.get("exports") or {}, ",".join(map(str, part))
    if ex:
        if ex["vllm"]["env"].get("VLLM_PP_LAYER_PARTITION") != joined:
            out.append("exports.vllm: partition differs")
        if ex["sglang"]["env"].get("SGLANG_PP_LAYER_PARTITION") != joined:
            out.append("exports.sglang: partition differs")
        if ex["trtllm"]["llm_args"]["pp_partition"] != part:
            out.append("exports.trtllm: pp_partition differs")
        if [list(x) for x in ex["torch"]["stages"]] != [list(s["modules"]) for s in plan["stages"]]:
            out.append("exports.torch: module names differ from the stages'")
    for b in plan.get("baselines", []):
        if not (sum(b["partition"]) == layers and len(b["partition"]) == plan["degrees"]["pp"]):
            out.append(f"baselines[{b['engine']}].partition: {b['partition']}")
    return out

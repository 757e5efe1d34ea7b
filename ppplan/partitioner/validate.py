"""One solver-independent consistency check of a Plan (JSON v1 as a dict).

Every plan the search returns, whatever solver cut it, must pass: the tests run it on the plans of
every solver, and a user can run it on a plan file they edited. It re-derives what the plan's own
numbers determine instead of trusting it (:data:`REDERIVED`). A plan holds each stage's times and
memory as sums over its layers, not per layer, so the figures of another cut need the profile:
a hand-edited ``partition`` is checked as a cut (sum, count, no empty stage), the stage ranges it
implies are re-derived and compared with the stage entries, and a mismatch says so.

Values outside their ranges (a zero cycle, no replicas, no stages, a negative degree, NaN) are
reported first and alone: the arithmetic checks would divide by them.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import ValidationError

from ppplan.core.errors import PpplanError
from ppplan.partitioner.plan import Plan
from ppplan.partitioner.problem import CutEvaluation, PartitionProblem, evaluate_cut

__all__ = ["REDERIVED", "edited_cut_ranges", "validate_plan"]

REDERIVED = (
    "stage ranges, units and modules from the partition; each stage's memory total from its parts, "
    "free = limit − total and the fit; last-stage busy = decode + (b / output tokens) × prefill; "
    "cycle = max(M, PP) × slowest busy, TPOT and throughput (without a request rate), throughput per GPU "
    "and KV capacity; "
    "exports and baselines against the partition"
)
"""What :func:`validate_plan` recomputes from the plan's own numbers (``ppplan validate`` prints it)."""

_MAX_COUNT = 2**53
"""largest count (layers, GPUs, sequences) taken at face value: beyond it floats lose integers"""

_REL = 1e-6
_OPTIONAL_METRICS = frozenset({"ttft_p50_ms", "ttft_p90_ms", "tokens_per_s_per_user", "capacity_requests_per_s"})
"""metrics a plan may leave null (no finite latency under an overload, plans before schema minor 1)"""


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


def _count_problem(where: str, value: Any, low: int = 1) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _MAX_COUNT:
        return f"{where}: {value!r} must be an integer in {low}..{_MAX_COUNT}"
    return None


def _number_problem(where: str, value: Any, *, positive: bool = False) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        return f"{where}: {value!r} must be a finite number {'> 0' if positive else '≥ 0'}"
    return None


def _range_problems(plan: dict[str, Any]) -> list[str]:
    """Counts and figures outside their ranges; the arithmetic checks divide by them."""
    deg, stages = plan["degrees"], plan["stages"]
    checks = [_count_problem(f"degrees.{k}", deg[k]) for k in ("tp", "pp", "replicas", "micro_batches")]
    checks += [_count_problem("degrees.micro_batch_size", deg["micro_batch_size"])]
    checks += [_count_problem(f"degrees.{k}", deg[k]) for k in ("gpus_used",)]
    checks += [_count_problem(f"degrees.{k}", deg.get(k, 1)) for k in ("ep", "attention_dp")]
    checks += [_count_problem(f"cluster.{k}", plan["cluster"][k]) for k in ("count", "nodes", "gpus_per_node")]
    checks += [
        _count_problem(f"workload.{k}", plan["workload"][k])
        for k in ("prompt_tokens", "output_tokens", "concurrency", "context")
    ]
    checks += [_count_problem("model.num_layers", plan["model"]["num_layers"])]
    checks += [_count_problem(f"partition[{i}]", n, low=0) for i, n in enumerate(plan["partition"])]
    checks += [_number_problem("schedule.cycle_ms", plan["schedule"]["cycle_ms"], positive=True)]
    checks += [
        _number_problem(f"metrics.{k}", v)
        for k, v in plan["metrics"].items()
        if k.endswith(("_s", "_ms")) and (v is not None or k not in _OPTIONAL_METRICS)
    ]
    checks += [_number_problem("metrics.throughput_per_gpu", plan["metrics"]["throughput_per_gpu"])]
    checks += [_count_problem("metrics.kv_capacity_tokens", plan["metrics"]["kv_capacity_tokens"], low=0)]
    for k, s in enumerate(stages):
        checks += [_number_problem(f"stages[{k}].times.{n}", v) for n, v in s["times"].items() if n != "source"]
        checks += [_number_problem(f"stages[{k}].memory.{n}", v) for n, v in s["memory"].items() if n != "free_gib"]
        checks += [_number_problem(f"stages[{k}].memory.limit_gib", s["memory"]["limit_gib"], positive=True)]
        checks += [_count_problem(f"stages[{k}].kv_capacity_tokens", s["kv_capacity_tokens"], low=0)]
        checks += [_count_problem(f"stages[{k}].units[{i}]", u, low=0) for i, u in enumerate(s["units"])]
    free = [_num(s["memory"]["free_gib"]) for s in stages]
    checks += [None if all(math.isfinite(f) for f in free) else "stages[].memory.free_gib: must be finite"]
    out = [c for c in checks if c is not None]
    if not stages:
        out.append("stages: empty; a plan has one entry per pipeline stage")
    if not plan["partition"]:
        out.append("partition: empty; a plan has the decoder layers of each stage")
    return out


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def edited_cut_ranges(plan: dict[str, Any]) -> list[tuple[int, int]] | None:
    """The decoder-layer ranges (first, last; 0-based, inclusive) of the plan's ``partition`` when it
    differs from the cut its stage entries describe (a hand-edited cut); None otherwise."""
    part = list(plan["partition"])
    described = [int(s["num_decoder_layers"]) for s in plan["stages"]]
    if part == described:
        return None
    out, first = [], 0
    for n in part:
        out.append((first, first + int(n) - 1))
        first += int(n)
    return out


def validate_plan(plan: dict[str, Any]) -> list[str]:
    """Problems found in ``plan`` (a Plan as a JSON dict that passed :class:`~partitioner.plan.Plan`
    validation; empty when consistent), each naming the field and both values. Never raises on
    such a dict: values outside their ranges are reported instead of computed with."""
    try:  # the checks below read the typed form (a hand-edited "3" for 3 is the same plan)
        plan = Plan.model_validate(plan).model_dump()
    except ValidationError as exc:
        first = exc.errors()[0]
        return [f"{'.'.join(str(x) for x in first['loc']) or 'plan'}: {first['msg']} (not a Plan JSON v1)"]
    ranges = _range_problems(plan)
    if ranges:
        return ranges
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
                deg["tp"] * deg.get("attention_dp", 1) * deg["pp"] * deg["replicas"]
                == deg["gpus_used"]
                <= plan["cluster"]["count"],
                f"degrees: tp × attention_dp × pp × replicas = "
                f"{deg['tp'] * deg.get('attention_dp', 1) * deg['pp'] * deg['replicas']}, "
                f"gpus_used {deg['gpus_used']}, cluster {plan['cluster']['count']}",
            ),
        )
        if not ok
    ]
    edited = edited_cut_ranges(plan)
    if edited is not None and sum(part) == layers and len(part) == len(stages) and min(part) >= 1:
        implied = ", ".join(f"{a}–{b}" for a, b in edited)
        out.append(
            f"partition: {part} differs from the cut the stage entries describe "
            f"{[s['num_decoder_layers'] for s in stages]}: its stages would hold decoder layers {implied}; "
            "the stage times and memory are sums over the old cut's layers and need the profile to be "
            "re-derived (replan, or `ppplan run PLAN --partition ...` re-predicts the times)"
        )
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
            out.append(f"stages[{k}].decoder_layers: {list(s['decoder_layers'])}, partition says {expected}")
        if s["units"][0] != next_unit:
            out.append(f"stages[{k}].units: starts at {s['units'][0]}, expected {next_unit}")
        if not (s["has_embedding"] == (k == 0) and s["has_lm_head"] == (k == len(stages) - 1)):
            out.append(f"stages[{k}]: embedding/head flags {s['has_embedding']}/{s['has_lm_head']}")
        out += _memory_problems(k, s["memory"], cut)
        if s["num_decoder_layers"] != s["decoder_layers"][1] - s["decoder_layers"][0] + 1:
            out.append(f"stages[{k}].num_decoder_layers: {s['num_decoder_layers']}, range {list(s['decoder_layers'])}")
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
    # with a request rate, TPOT and throughput are at that rate (the queueing model), not the cycle's
    at_rate = plan["workload"].get("request_rate_source") == "given"
    if not at_rate and not _close(m["tpot_ms"], sched["cycle_ms"]):
        out.append(f"metrics.tpot_ms: {m['tpot_ms']}, cycle {sched['cycle_ms']}")
    per_replica = math.ceil(plan["workload"]["concurrency"] / deg["replicas"])
    if deg["micro_batches"] * deg["micro_batch_size"] < per_replica:
        out.append(
            f"degrees: {deg['micro_batches']} × {deg['micro_batch_size']} sequences hold fewer than {per_replica}"
        )
    thr = per_replica * deg["replicas"] / (sched["cycle_ms"] / 1e3)
    if not at_rate and not _close(thr, m["throughput_tokens_per_s"]):
        out.append(
            f"metrics.throughput_tokens_per_s: {m['throughput_tokens_per_s']}, sequences × replicas / cycle = {thr}"
        )
    per_gpu = m["throughput_tokens_per_s"] / deg["gpus_used"]
    if not _close(per_gpu, m["throughput_per_gpu"]):
        out.append(f"metrics.throughput_per_gpu: {m['throughput_per_gpu']}, throughput / gpus_used = {per_gpu}")
    last = stages[-1]["times"]
    busy = last["decode_ms"] + deg["micro_batch_size"] / plan["workload"]["output_tokens"] * last["prefill_ms"]
    if not _close(busy, last["busy_ms"]):
        out.append(
            f"stages[{len(stages) - 1}].times.busy_ms: {last['busy_ms']}, decode + (b / output) × prefill = {busy}"
        )
    if m["kv_capacity_tokens"] != min(s["kv_capacity_tokens"] for s in stages):
        out.append("metrics.kv_capacity_tokens: not the tightest stage's")
    return out


def _export_problems(plan: dict[str, Any], part: list[int], layers: int) -> list[str]:
    """The exports and the baselines against the partition."""
    out: list[str] = []
    ex, joined = plan.get("exports") or {}, ",".join(map(str, part))
    if ex:
        expected: dict[tuple[str, ...], object] = {
            ("vllm", "env", "VLLM_PP_LAYER_PARTITION"): joined,
            ("sglang", "env", "SGLANG_PP_LAYER_PARTITION"): joined,
            ("trtllm", "llm_args", "pp_partition"): part,
            ("torch", "stages"): [list(s["modules"]) for s in plan["stages"]],
        }
        for path, want in expected.items():
            got = _lookup(ex, path)
            if isinstance(got, list | tuple) and path[0] == "torch":
                got = [list(x) if isinstance(x, list | tuple) else x for x in got]
            if got != want:
                out.append(f"exports.{'.'.join(path)}: {_short(got)}, the partition says {_short(want)}")
    for b in plan.get("baselines", []):
        if not (sum(b["partition"]) == layers and len(b["partition"]) == plan["degrees"]["pp"]):
            out.append(f"baselines[{b['engine']}].partition: {b['partition']}")
    return out


def _lookup(d: Any, path: tuple[str, ...]) -> Any:
    """``d[path[0]][path[1]]…``, or None where a level is missing or not an object."""
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (an edited file may hold anything)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"

"""One solver-independent consistency check of a Plan (JSON v1 as a dict).

Every plan the search returns, whatever solver cut it, must pass: the tests run it on the plans of
every solver, and a user can run it on a plan file they edited. It re-derives what can be derived
(partition sums, stage ranges, memory totals, the schedule formula, exports) instead of trusting it.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["validate_plan"]

_REL = 1e-6


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= _REL * max(1.0, abs(a), abs(b))


def validate_plan(plan: dict[str, Any]) -> list[str]:
    """Problems found in ``plan`` (empty when consistent), each naming the field and both values."""
    out: list[str] = []

    def need(ok: bool, msg: str) -> None:
        if not ok:
            out.append(msg)

    deg, part, stages = plan["degrees"], list(plan["partition"]), plan["stages"]
    layers = int(plan["model"]["num_layers"])
    need(sum(part) == layers, f"partition: sums to {sum(part)}, the model has {layers} decoder layers")
    need(
        len(part) == deg["pp"] == len(stages),
        f"partition: {len(part)} stages, degrees.pp {deg['pp']}, {len(stages)} stage entries",
    )
    need(all(n >= 1 for n in part), f"partition: {part} leaves a stage without a decoder layer")
    need(
        deg["tp"] * deg["pp"] * deg["replicas"] == deg["gpus_used"] <= plan["cluster"]["count"],
        f"degrees: tp × pp × replicas = {deg['tp'] * deg['pp'] * deg['replicas']}, gpus_used {deg['gpus_used']}, "
        f"cluster {plan['cluster']['count']}",
    )
    first_layer, next_unit = 0, 0
    for k, s in enumerate(stages):
        n = part[k] if k < len(part) else 0
        need(
            list(s["decoder_layers"]) == [first_layer, first_layer + n - 1],
            f"stages[{k}].decoder_layers: {s['decoder_layers']}, partition says {[first_layer, first_layer + n - 1]}",
        )
        need(s["units"][0] == next_unit, f"stages[{k}].units: starts at {s['units'][0]}, expected {next_unit}")
        need(
            s["has_embedding"] == (k == 0) and s["has_lm_head"] == (k == len(stages) - 1),
            f"stages[{k}]: embedding/head flags {s['has_embedding']}/{s['has_lm_head']}",
        )
        mem = s["memory"]
        parts = mem["weights_gib"] + mem["kv_cache_gib"] + mem["workspace_gib"] + mem["reserve_gib"]
        need(_close(parts, mem["total_gib"]), f"stages[{k}].memory: parts sum to {parts}, total {mem['total_gib']}")
        need(
            mem["total_gib"] <= mem["limit_gib"] * (1 + _REL),
            f"stages[{k}].memory: total {mem['total_gib']:.3f} GiB over the limit {mem['limit_gib']:.3f} GiB",
        )
        need(
            _close(mem["limit_gib"] - mem["total_gib"], mem["free_gib"]),
            f"stages[{k}].memory: free {mem['free_gib']} ≠ limit − total",
        )
        need(
            sum(".layers." in m for m in s["modules"]) == n,
            f"stages[{k}].modules: {sum('.layers.' in m for m in s['modules'])} decoder layers, partition says {n}",
        )
        first_layer += n
        next_unit = s["units"][1] + 1
    need(next_unit == layers + 2, f"stages: cover units 0..{next_unit - 1}, the model has {layers + 2}")
    sched, m = plan["schedule"], plan["metrics"]
    slowest = max(s["times"]["busy_ms"] for s in stages)
    cycle = max(deg["micro_batches"], deg["pp"]) * slowest
    need(_close(cycle, sched["cycle_ms"]), f"schedule.cycle_ms: {sched['cycle_ms']}, max(M, PP) × slowest = {cycle}")
    need(_close(m["tpot_ms"], sched["cycle_ms"]), f"metrics.tpot_ms: {m['tpot_ms']}, cycle {sched['cycle_ms']}")
    per_replica = math.ceil(plan["workload"]["concurrency"] / deg["replicas"])
    need(
        deg["micro_batches"] * deg["micro_batch_size"] >= per_replica,
        f"degrees: {deg['micro_batches']} × {deg['micro_batch_size']} sequences hold fewer than {per_replica}",
    )
    thr = per_replica * deg["replicas"] / (sched["cycle_ms"] / 1e3)
    need(
        _close(thr, m["throughput_tokens_per_s"]),
        f"metrics.throughput_tokens_per_s: {m['throughput_tokens_per_s']}, sequences × replicas / cycle = {thr}",
    )
    need(
        m["kv_capacity_tokens"] == min(s["kv_capacity_tokens"] for s in stages),
        "metrics.kv_capacity_tokens: not the tightest stage's",
    )
    ex, joined = plan.get("exports") or {}, ",".join(map(str, part))
    if ex:
        need(ex["vllm"]["env"].get("VLLM_PP_LAYER_PARTITION") == joined, "exports.vllm: partition differs")
        need(ex["sglang"]["env"].get("SGLANG_PP_LAYER_PARTITION") == joined, "exports.sglang: partition differs")
        need(ex["trtllm"]["llm_args"]["pp_partition"] == part, "exports.trtllm: pp_partition differs")
        need(
            [list(x) for x in ex["torch"]["stages"]] == [list(s["modules"]) for s in stages],
            "exports.torch: module names differ from the stages'",
        )
    for b in plan.get("baselines", []):
        need(
            sum(b["partition"]) == layers and len(b["partition"]) == deg["pp"],
            f"baselines[{b['engine']}].partition: {b['partition']}",
        )
    return out

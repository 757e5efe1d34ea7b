"""Why nothing was planned: the memory shortfall when no configuration fits, and the SLO that no
configuration meets, each with what to change."""

from __future__ import annotations

import math

from ppplan.core.model_source import ModelSource
from ppplan.partitioner.costs import Costs, Evaluation
from ppplan.partitioner.dp import solve_partition
from ppplan.partitioner.problem import Shortfall
from ppplan.partitioner.space import GIB, InfeasibleError, PlanningError

__all__ = ["explain_infeasible", "explain_slo_miss"]


def explain_infeasible(costs: Costs, source: ModelSource, infeasible: list[Evaluation]) -> InfeasibleError:
    """The error when no layout fits: what the model needs, what the GPUs offer, the largest
    configuration's failing stage and what to change."""
    req, profile, st = costs.req, costs.profile, costs.setup
    w = costs.cm.weight_bytes_per_gpu(1)
    total_w = float(w.sum()) - (float(w[-1] - costs.cm.replicated[-1]) if st.tied_embeddings else 0.0)
    conc = req.concurrency or 1
    kv = float(costs.cm.kv_bytes_per_gpu(1, conc, st.kv_tokens).sum())
    have = st.count * st.limit_bytes
    msg = (
        f"{profile.model.name} in {profile.weight_dtype} needs {total_w / GIB:.1f} GiB of weights "
        f"+ {kv / GIB:.1f} GiB of KV cache ({conc} sequence{'s' if conc != 1 else ''} × {st.kv_tokens} tokens); "
        f"{req.gpus} offer {st.limit_bytes / GIB:.1f} GiB each after the "
        f"{req.gpu_memory_utilization:g} utilisation and {req.runtime_reserve_gib:g} GiB reserve "
        f"({have / GIB:.1f} GiB in all)"
    )
    if infeasible:
        biggest = max(infeasible, key=lambda e: (e.layout.tp * e.layout.pp, e.layout.tp, -e.layout.sequences)).layout
        sol = solve_partition(costs.problem(biggest))
        msg += f"; the largest configuration tried (TP {biggest.tp} × PP {biggest.pp}) fails: " + _shortfall_text(
            sol.shortfall, sol.reason, st.layers
        )
    hints = []
    # quantising only helps when the weights are a real share of what does not fit
    if profile.weight_dtype in ("bf16", "fp16") and total_w > 0.1 * have:
        # an unknown dtype (a config file, a preset without one) is None or blank: no hint then
        published = next(iter((source.published_checkpoint_dtype or "").split()), "")
        ckpt = f" (the published checkpoint is {published})" if published and published != "bf16" else ""
        hints.append(f"quantised weights need less: --weight-dtype fp8 or int4{ckpt}")
    if conc > 1 and kv > 0.25 * have:
        hints.append("fewer sequences (--concurrency) or a shorter --context shrink the KV cache")
    if hints:
        msg += "; " + "; ".join(hints)
    return InfeasibleError("gpus", rule="does not fit: " + msg, needed_bytes=total_w + kv, available_bytes=have)


def _unit_name(unit: int, layers: int) -> str:
    """A planning unit in the user's terms: unit 0 is the embedding, units 1..L the decoder layers
    0..L-1, unit L+1 the final norm and LM head."""
    if unit == 0:
        return "the embedding"
    if unit == layers + 1:
        return "the LM head"
    return f"decoder layer {unit - 1}"


def _shortfall_text(miss: Shortfall | None, reason: str | None, layers: int) -> str:
    """The DP's infeasibility in decoder layers (0-based) instead of planning units."""
    if miss is None:
        return reason or "no cut fits in memory"
    need, limit = f"{miss.needed_bytes / GIB:.1f} GiB", f"limit {miss.limit_bytes / GIB:.1f} GiB"
    if miss.stage is None:
        return f"{_unit_name(miss.first_unit, layers)} alone needs {need}, {limit}"
    span = f"{_unit_name(miss.first_unit, layers)} to {_unit_name(miss.last_unit, layers)}"
    return f"stage {miss.stage} ({span}) needs {need}, {limit}, in the cut that overshoots its limits least"


def _degrees_text(e: Evaluation) -> str:
    lay = e.layout
    return (
        f"TP {lay.tp} × PP {lay.pp} × {lay.replicas} replica(s) = {lay.gpus} GPUs, "
        f"{lay.sequences} sequence(s) per replica"
    )


def _ms(x: float) -> str:
    return f"{x * 1e3:.1f} ms" if math.isfinite(x) else "unbounded (the rate exceeds what it sustains)"


def explain_slo_miss(costs: Costs, closest: Evaluation) -> PlanningError:
    """The error when no configuration meets the SLOs: each SLO missed, the best value any
    configuration reaches, and which knobs would help."""
    req, st, profile = costs.req, costs.setup, costs.profile
    parts: list[str] = []
    hints: list[str] = []
    if req.max_tpot_ms is not None and closest.tpot * 1e3 > req.max_tpot_ms:
        parts.append(
            f"TPOT ≤ {req.max_tpot_ms:g} ms: the best reached is {_ms(closest.tpot)} ({_degrees_text(closest)})"
        )
        if closest.layout.sequences > closest.layout.pp:
            hints.append("fewer sequences per replica (--concurrency)")
        hints.append("more GPUs per replica (a larger --gpus, or TP across more GPUs)")
        if profile.weight_dtype in ("bf16", "fp16"):
            hints.append("--weight-dtype fp8 (fewer bytes read per token)")
    if req.max_ttft_ms is not None and closest.ttft_p90 * 1e3 > req.max_ttft_ms:
        parts.append(
            f"TTFT p90 ≤ {req.max_ttft_ms:g} ms: the best reached is {_ms(closest.ttft_p90)} "
            f"(idle {_ms(closest.ttft)}; {_degrees_text(closest)})"
        )
        hints.append("a larger token budget per step (--prefill-chunk-tokens) or PP for long prompts")
        if req.rate is not None:
            hints.append("a lower request rate or more replicas (more GPUs)")
    if req.rate is not None and closest.capacity * closest.layout.replicas < req.rate:
        parts.append(
            f"request rate {req.rate:g}/s: the most any configuration sustains is "
            f"{closest.capacity * closest.layout.replicas:.3g}/s ({_degrees_text(closest)})"
        )
        hints.append("more GPUs")
    if profile.kv_dtype in ("bf16", "fp16"):
        hints.append("--kv-dtype fp8 (room for a larger batch, fewer bytes read per token)")
    if not parts:
        parts.append(f"the closest configuration is {_degrees_text(closest)}")
    rule = "no configuration meets the SLOs: " + "; ".join(parts)
    if hints:
        rule += "; to meet them try " + ", ".join(dict.fromkeys(hints))
    return PlanningError(
        "slo",
        rule=rule,
        best_tpot_ms=closest.tpot * 1e3 if math.isfinite(closest.tpot) else None,
        best_ttft_p90_ms=closest.ttft_p90 * 1e3 if math.isfinite(closest.ttft_p90) else None,
        gpus=closest.layout.gpus,
        context_tokens=st.context,
    )

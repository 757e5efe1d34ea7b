"""Plan assembly: per-stage detail, the engines' default cuts as baselines, the Plan itself, and
the explanation when nothing fits."""

from __future__ import annotations

import datetime as _dt
import functools
import math
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, cast

from ppplan.core.model_source import ModelSource
from ppplan.partitioner.baselines import ENGINE_DEFAULTS
from ppplan.partitioner.costs import Costs, Evaluation
from ppplan.partitioner.dp import solve_partition
from ppplan.partitioner.exports import export_plan
from ppplan.partitioner.plan import (
    Baseline,
    Candidate,
    ClusterInfo,
    Degrees,
    Metrics,
    Plan,
    Provenance,
    Schedule,
    StageMemory,
    StagePlan,
    StageTimes,
    WorkloadInfo,
)
from ppplan.partitioner.problem import Shortfall, evaluate_cut, stage_bounds
from ppplan.partitioner.space import GIB, InfeasibleError, Layout

__all__ = ["SolverReport", "build_plan", "explain_infeasible", "stage_detail"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SolverReport:
    """What the plan's provenance says about the solver of the chosen cut."""

    name: str
    optimal: bool
    """the cut is proven optimal for its degrees"""
    gap: float
    """relative optimality gap, 0 when optimal"""


@functools.cache
def _ppplan_version() -> str:
    try:
        return version("ppplan")
    except PackageNotFoundError:
        return "0+unknown"


def stage_detail(costs: Costs, lay: Layout, sizes: tuple[int, ...] | list[int]) -> list[StagePlan]:
    """Every stage of ``lay`` cut into ``sizes`` decoder layers: units, devices, times (ms), memory (GiB)."""
    st = costs.setup
    t, p, b = lay.tp, lay.pp, lay.micro_batch_size
    pre = costs.prefill(t)
    dec = costs.decode(t, b)
    w = costs.weights(t, p)
    kv = costs.cm.kv_bytes_per_gpu(t, lay.sequences, st.context)
    kv_seq = costs.cm.kv_bytes_per_sequence(t, st.context)
    ws = costs.cm.workspace_bytes(t, costs.req.prefill_chunk_tokens, lay.sequences)
    inter = costs.inter_node(lay)
    tokens = costs.busy_tokens(lay)
    desc = costs.cm.describe()
    src = f"{desc['time_source']} ({costs.profile.label}, {desc['cost_model']})"
    stages = []
    for k, (a, z) in enumerate(stage_bounds(sizes)):
        lo = 0 if k == 0 else a + 1
        hi = z + 1 if k < p - 1 else st.layers + 1
        units = slice(lo, hi + 1)
        send = costs.cm.send_time(b, inter[k]) if k < p - 1 else 0.0
        send_busy = costs.cm.send_time(tokens, inter[k]) if k < p - 1 else 0.0
        busy = float(dec[units].sum() + (b / st.output_tokens) * pre[units].sum()) + send_busy
        weights = float(w[units].sum())
        kvb = float(kv[units].sum())
        wsb = float(ws[units].max())
        total = weights + kvb + wsb + st.reserve_bytes
        room = st.usable_bytes - weights - wsb - st.reserve_bytes
        per_seq = float(kv_seq[units].sum())
        first_gpu = k * t
        stages.append(
            StagePlan(
                index=k,
                units=(lo, hi),
                decoder_layers=(a, z),
                num_decoder_layers=z - a + 1,
                has_embedding=k == 0,
                has_lm_head=k == p - 1,
                modules=[m for u in costs.profile.units[units] for m in u.modules],
                devices=list(range(first_gpu, first_gpu + t)),
                node=first_gpu // st.gpus_per_node,
                times=StageTimes(
                    decode_ms=float(dec[units].sum()) * 1e3,
                    prefill_ms=float(pre[units].sum()) * 1e3,
                    send_ms=send * 1e3,
                    busy_ms=busy * 1e3,
                    source=src,
                ),
                memory=StageMemory(
                    weights_gib=weights / GIB,
                    kv_cache_gib=kvb / GIB,
                    workspace_gib=wsb / GIB,
                    reserve_gib=st.reserve_bytes / GIB,
                    total_gib=total / GIB,
                    limit_gib=st.usable_bytes / GIB,
                    free_gib=(st.usable_bytes - total) / GIB,
                ),
                # tokens of context-long sequences: with sliding-window layers a sequence costs less than
                # context × per-token bytes, so tokens = sequences × context, not room / per-token bytes
                kv_capacity_tokens=int(room / per_seq * st.context) if per_seq > 0 else 0,
                kv_capacity_sequences=room / per_seq if per_seq > 0 else math.inf,
            )
        )
    return stages


def _ratio_gain(ours: float, theirs: float) -> float:
    """ours / theirs - 1, with float noise below 1e-9 shown as 0 (an equal cut is no loss)."""
    g = ours / theirs - 1
    return 0.0 if abs(g) < 1e-9 else g


def _baseline(costs: Costs, best: Evaluation, engine: str, sizes: list[int], kv_cap: int) -> Baseline:
    """An engine's default cut with the degrees of ``best``: times, memory check, KV capacity, gains."""
    lay = best.layout
    ev = evaluate_cut(costs.problem(lay), sizes)
    cycle = max(lay.micro_batches, lay.pp) * ev.bottleneck
    thr = lay.replicas * lay.sequences / cycle
    cap = min(s.kv_capacity_tokens for s in stage_detail(costs, lay, sizes))
    reason = None
    if not ev.fits:
        over = [k for k, ok in enumerate(ev.stage_fits) if not ok]
        worst = max(over, key=lambda k: ev.stage_memory[k])
        st = costs.setup
        reason = (
            f"stage {worst} needs {(ev.stage_memory[worst] + st.reserve_bytes) / GIB:.1f} GiB per GPU, "
            f"limit {st.usable_bytes / GIB:.1f} GiB"
        )
    return Baseline(
        engine=engine,  # type: ignore[arg-type]
        partition=sizes,
        feasible=ev.fits,
        reason=reason,
        bottleneck_ms=ev.bottleneck * 1e3,
        throughput_tokens_per_s=thr if ev.fits else None,
        tpot_ms=cycle * 1e3 if ev.fits else None,
        kv_capacity_tokens=cap,
        throughput_gain=_ratio_gain(best.throughput, thr) if ev.fits else None,
        kv_capacity_gain=_ratio_gain(kv_cap, cap) if ev.fits and cap > 0 else None,
    )


def _degrees(lay: Layout) -> Degrees:
    return Degrees(
        tp=lay.tp,
        pp=lay.pp,
        replicas=lay.replicas,
        micro_batches=lay.micro_batches,
        micro_batch_size=lay.micro_batch_size,
        gpus_used=lay.gpus,
    )


def _candidate(e: Evaluation) -> Candidate:
    return Candidate(
        degrees=_degrees(e.layout),
        partition=list(e.sizes) if e.sizes else None,
        throughput_tokens_per_s=e.throughput,
        throughput_per_gpu=e.throughput / e.gpus,
        tpot_ms=e.tpot * 1e3,
        ttft_ms=e.ttft * 1e3,
        slo_met=e.slo_met,
    )


def _notes(costs: Costs, best: Evaluation) -> list[str]:
    profile = costs.profile
    notes = []
    if not best.slo_met:
        notes.append("no configuration meets the SLOs; this is the closest one by the objective")
    if profile.kind == "measured" and not costs.cm.measured:
        notes.append(
            f"the profile was measured on {profile.device}, not {costs.setup.gpu.name}: its bytes are used, "
            "its times are not (analytic roofline instead)"
        )
    if profile.quantization:
        notes.append(f"weights: {profile.quantization}")
    if profile.provenance.get("notes"):
        notes.append(str(profile.provenance["notes"]))
    notes.append(
        "TTFT is for one request on an idle replica (no queueing); TPOT and throughput are the "
        "steady state with prefill chunks amortised over the decode cycle"
    )
    return notes


def _schedule(best: Evaluation, stages: list[StagePlan]) -> Schedule:
    lay = best.layout
    m, p = lay.micro_batches, lay.pp
    return Schedule(
        micro_batches=m,
        micro_batch_size=lay.micro_batch_size,
        cycle_ms=best.cycle * 1e3,
        bottleneck_stage=max(range(len(stages)), key=lambda k: stages[k].times.busy_ms),
        bubble_fraction=1 - m / max(m, p),
        description=f"{m} micro-batch(es) of {lay.micro_batch_size} sequences on {p} stage(s): one cycle = "
        f"max(M, PP) × slowest stage = {max(m, p)} × {best.bottleneck * 1e3:.3f} ms",
    )


def _cluster(costs: Costs) -> ClusterInfo:
    st = costs.setup
    return ClusterInfo(
        gpu=st.gpu.name,
        count=st.count,
        nodes=st.nodes,
        gpus_per_node=st.gpus_per_node,
        hbm_gib=st.gpu.hbm_bytes / GIB,
        usable_gib=st.usable_bytes / GIB,
        nvlink_gbps=st.gpu.nvlink_bw / 1e9,
        network_gbps=st.gpu.network_bw / 1e9,
    )


def _provenance(costs: Costs, solver: SolverReport, solve_ms: float) -> Provenance:
    profile = costs.profile
    desc = costs.cm.describe()
    return Provenance(
        profile_id=profile.profile_id,
        profile_kind=profile.kind,
        profile_label=profile.label,
        cost_model=str(desc["cost_model"]),
        time_source=str(desc["time_source"]),
        efficiency=cast(dict[str, object], desc["efficiency"]),
        solver=solver.name,
        optimal=solver.optimal,
        gap=solver.gap,
        solve_time_ms=solve_ms,
        configs_evaluated=costs.evaluated,
        ppplan_version=_ppplan_version(),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )


def build_plan(
    costs: Costs,
    source: ModelSource,
    best: Evaluation,
    solver: SolverReport,
    runner_ups: list[Evaluation],
    front: list[Evaluation],
    solve_ms: float,
) -> Plan:
    """The Plan of ``best`` with its evidence: stages, baselines, runner-ups, Pareto front, provenance."""
    assert best.sizes is not None
    req, profile, st = costs.req, costs.profile, costs.setup
    stages = stage_detail(costs, best.layout, best.sizes)
    kv_cap = min(s.kv_capacity_tokens for s in stages)
    metrics = Metrics(
        throughput_tokens_per_s=best.throughput,
        throughput_per_gpu=best.throughput / best.gpus,
        tpot_ms=best.tpot * 1e3,
        ttft_ms=best.ttft * 1e3,
        kv_capacity_tokens=kv_cap,
        max_concurrency=min(s.kv_capacity_sequences for s in stages),
        slo_met=best.slo_met,
        predicted_by=f"{profile.label} with {costs.cm.describe()['cost_model']} on {st.gpu.name}",
    )
    baselines = [
        _baseline(costs, best, name, rule(st.layers, best.layout.pp), kv_cap) for name, rule in ENGINE_DEFAULTS.items()
    ]
    body: dict[str, Any] = {
        "model": profile.model,
        "model_source": source.source,
        "request": req.model_dump(mode="json"),
        "cluster": _cluster(costs),
        "workload": WorkloadInfo(
            prompt_tokens=st.prompt_tokens,
            output_tokens=st.output_tokens,
            concurrency=req.concurrency,
            context=st.context,
        ),
        "objective": req.objective,
        "weight_dtype": profile.weight_dtype,
        "kv_dtype": profile.kv_dtype,
        "quantization": profile.quantization,
        "degrees": _degrees(best.layout),
        "partition": [s.num_decoder_layers for s in stages],
        "stages": stages,
        "schedule": _schedule(best, stages),
        "metrics": metrics,
        "baselines": baselines,
        "runner_ups": [_candidate(e) for e in runner_ups],
        "pareto": [_candidate(e) for e in front],
        "provenance": _provenance(costs, solver, solve_ms),
        "notes": _notes(costs, best),
    }
    draft = Plan(**body, exports={})
    dumped = draft.model_dump(mode="json")
    return draft.model_copy(update={"exports": export_plan(dumped, source.engine_ref)})


def explain_infeasible(costs: Costs, source: ModelSource, infeasible: list[Evaluation]) -> InfeasibleError:
    """The error when no layout fits: what the model needs, what the GPUs offer, the largest
    configuration's failing stage and what to change."""
    req, profile, st = costs.req, costs.profile, costs.setup
    w = costs.cm.weight_bytes_per_gpu(1)
    total_w = float(w.sum()) - (float(w[-1] - costs.cm.replicated[-1]) if st.tied_embeddings else 0.0)
    kv = float(costs.cm.kv_bytes_per_gpu(1, req.concurrency, st.context).sum())
    have = st.count * st.limit_bytes
    msg = (
        f"{profile.model.name} in {profile.weight_dtype} needs {total_w / GIB:.1f} GiB of weights "
        f"+ {kv / GIB:.1f} GiB of KV cache ({req.concurrency} sequences × {st.context} tokens); "
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
    if req.concurrency > 1 and kv > 0.25 * have:
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

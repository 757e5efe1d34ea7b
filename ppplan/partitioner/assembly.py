"""Plan assembly: per-stage and per-unit detail, the engines' default cuts as baselines, the
candidates and the Pareto front, and the Plan itself."""

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
from ppplan.partitioner.explain import explain_infeasible, explain_slo_miss
from ppplan.partitioner.exports import export_plan
from ppplan.partitioner.plan import (
    PLAN_SCHEMA_MINOR,
    Baseline,
    BaselineStage,
    ClusterInfo,
    Metrics,
    Plan,
    Provenance,
    Schedule,
    StageMemory,
    StagePlan,
    StageTimes,
    WorkloadInfo,
)
from ppplan.partitioner.points import candidate, candidates, degrees_of, finite_ms, pareto_points, unit_costs
from ppplan.partitioner.problem import evaluate_cut, stage_bounds
from ppplan.partitioner.space import GIB, Layout

__all__ = ["SolverReport", "build_plan", "explain_infeasible", "explain_slo_miss", "stage_detail"]


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
    kv = costs.kv_bytes(t, lay.sequences)
    kv_seq = costs.kv_per_sequence(t)
    ws = costs.workspace(t, lay.sequences)
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
                # tokens of average sequences: with sliding-window layers a sequence costs less than
                # tokens × per-token bytes, so tokens = sequences × tokens each, not room / per-token bytes
                kv_capacity_tokens=int(room / per_seq * st.kv_tokens) if per_seq > 0 else 0,
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
    detail = stage_detail(costs, lay, sizes)
    cap = min(s.kv_capacity_tokens for s in detail)
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
        throughput_gain=_ratio_gain(lay.replicas * lay.sequences / best.cycle, thr) if ev.fits else None,
        kv_capacity_gain=_ratio_gain(kv_cap, cap) if ev.fits and cap > 0 else None,
        stages=[
            BaselineStage(
                weights_gib=s.memory.weights_gib,
                kv_cache_gib=s.memory.kv_cache_gib,
                workspace_gib=s.memory.workspace_gib,
                reserve_gib=s.memory.reserve_gib,
                total_gib=s.memory.total_gib,
                limit_gib=s.memory.limit_gib,
                busy_ms=s.times.busy_ms,
            )
            for s in detail
        ],
    )


def _notes(costs: Costs, best: Evaluation) -> list[str]:
    profile = costs.profile
    notes = []
    if not best.slo_met:
        notes.append(
            "the pinned concurrency misses the SLOs (leave --concurrency unset to search the batch); "
            "the closest configuration by the objective"
        )
    note = costs.cm.profile_note()
    if note:
        notes.append(note)
    if profile.quantization:
        notes.append(f"weights: {profile.quantization}")
    if profile.provenance.get("notes"):
        notes.append(str(profile.provenance["notes"]))
    load = (
        "the request rate"
        if costs.req.rate is not None
        else "the rate a closed loop of the planned sequences runs at (no request rate given)"
    )
    notes.append(
        f"ttft_ms is one request on an idle replica; ttft_p50/p90 are under Poisson arrivals at {load} "
        "(queueing approximation); TPOT and throughput are the steady state with prefill chunks "
        "interleaved with decode steps; max_tpot_ms bounds TPOT, max_ttft_ms the p90 TTFT"
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
        name=f"decode steady state, {m} micro-batch(es) in flight on {p} stage(s)"
        + (" (M = PP: no bubble)" if m >= p else f" (M < PP: {1 - m / p:.0%} bubble)"),
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


def _workload(costs: Costs, best: Evaluation, mode: str) -> WorkloadInfo:
    req, st, lay = costs.req, costs.setup, best.layout
    wl = costs.workload
    return WorkloadInfo(
        prompt_tokens=st.prompt_tokens,
        output_tokens=st.output_tokens,
        concurrency=lay.sequences * lay.replicas,
        context=st.context,
        concurrency_source="pinned" if mode == "pinned" else "searched",
        prompt_tokens_sd=wl.prompt.sd or None,
        output_tokens_sd=wl.output.sd or None,
        kv_tokens_per_sequence=st.kv_tokens,
        token_budget=st.token_budget,
        request_rate=best.rate * lay.replicas,
        request_rate_source="given" if req.rate is not None else "closed loop at the planned concurrency",
        engine=st.engine,
    )


def build_plan(
    costs: Costs,
    source: ModelSource,
    best: Evaluation,
    solver: SolverReport,
    runner_ups: list[Evaluation],
    front: list[Evaluation],
    evaluated: list[Evaluation],
    mode: str,
    solve_ms: float,
) -> Plan:
    """The Plan of ``best`` with its evidence: stages, units, baselines, runner-ups, candidates, the
    Pareto front (``mode`` is the batch search's: pinned, largest, smallest or one), provenance."""
    assert best.sizes is not None
    req, profile, st = costs.req, costs.profile, costs.setup
    stages = stage_detail(costs, best.layout, best.sizes)
    kv_cap = min(s.kv_capacity_tokens for s in stages)
    metrics = Metrics(
        throughput_tokens_per_s=best.throughput,
        throughput_per_gpu=best.per_gpu,
        tpot_ms=best.tpot * 1e3,
        ttft_ms=best.ttft * 1e3,
        ttft_p50_ms=finite_ms(best.ttft_p50),
        ttft_p90_ms=finite_ms(best.ttft_p90),
        tokens_per_s_per_user=1.0 / best.tpot if best.tpot > 0 else None,
        capacity_requests_per_s=best.capacity * best.layout.replicas,
        kv_capacity_tokens=kv_cap,
        max_concurrency=min(s.kv_capacity_sequences for s in stages),
        slo_met=best.slo_met,
        predicted_by=f"{profile.label} with {costs.cm.describe()['cost_model']} on {st.gpu.name}",
    )
    baselines = [
        _baseline(costs, best, name, rule(st.layers, best.layout.pp), kv_cap) for name, rule in ENGINE_DEFAULTS.items()
    ]
    body: dict[str, Any] = {
        "schema_minor": PLAN_SCHEMA_MINOR,
        "model": profile.model,
        "model_source": source.source,
        "request": req.model_dump(mode="json"),
        "cluster": _cluster(costs),
        "workload": _workload(costs, best, mode),
        "objective": req.objective,
        "weight_dtype": profile.weight_dtype,
        "kv_dtype": profile.kv_dtype,
        "quantization": profile.quantization,
        "degrees": degrees_of(best.layout),
        "partition": [s.num_decoder_layers for s in stages],
        "stages": stages,
        "schedule": _schedule(best, stages),
        "metrics": metrics,
        "baselines": baselines,
        "runner_ups": [candidate(e) for e in runner_ups],
        "pareto": pareto_points(front, best),
        "candidates": candidates([best, *evaluated], best),
        "units": unit_costs(costs, best, stages),
        "provenance": _provenance(costs, solver, solve_ms),
        "notes": _notes(costs, best),
    }
    draft = Plan(**body, exports={})
    dumped = draft.model_dump(mode="json")
    return draft.model_copy(update={"exports": export_plan(dumped, source.engine_ref)})

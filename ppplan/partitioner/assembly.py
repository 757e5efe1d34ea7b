"""Plan assembly: per-stage and per-unit detail, the engines' default cuts as baselines, the
candidates and the Pareto front, and the Plan itself."""

from __future__ import annotations

import datetime as _dt
import functools
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
    StagePlan,
    WorkloadInfo,
)
from ppplan.partitioner.points import (
    candidate,
    candidates,
    degrees_of,
    finite_ms,
    pareto_points,
    stage_detail,
    unit_costs,
)
from ppplan.partitioner.problem import evaluate_cut
from ppplan.partitioner.space import GIB

__all__ = [
    "SolverReport",
    "assemble_plan",
    "baseline",
    "build_plan",
    "explain_infeasible",
    "explain_slo_miss",
    "metrics",
    "ppplan_version",
    "provenance",
    "schedule",
    "stage_detail",
    "workload",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class SolverReport:
    """What the plan's provenance says about the solver of the chosen cut."""

    name: str
    optimal: bool
    """the cut is proven optimal for its degrees"""
    gap: float
    """relative optimality gap, 0 when optimal"""


@functools.cache
def ppplan_version() -> str:
    """This package's installed version ("0+unknown" when it is not installed)."""
    try:
        return version("ppplan")
    except PackageNotFoundError:
        return "0+unknown"


def _ratio_gain(ours: float, theirs: float) -> float:
    """ours / theirs - 1, with float noise below 1e-9 shown as 0 (an equal cut is no loss)."""
    g = ours / theirs - 1
    return 0.0 if abs(g) < 1e-9 else g


def baseline(
    engine: str,
    best: Evaluation,
    sizes: list[int],
    detail: list[StagePlan],
    *,
    fits: bool,
    bottleneck: float,
    reason: str | None,
    kv_cap: int,
) -> Baseline:
    """An engine's cut ``sizes`` with the degrees of ``best``, its stages ``detail`` and slowest stage
    (``bottleneck`` seconds): times, the memory check (``reason`` when it does not fit), KV capacity
    and the gains of ``best`` (whose KV capacity is ``kv_cap`` tokens) over it."""
    lay = best.layout
    cycle = max(lay.micro_batches, lay.pp) * bottleneck
    thr = lay.replicas * lay.sequences / cycle
    cap = min(s.kv_capacity_tokens for s in detail)
    return Baseline(
        engine=engine,  # type: ignore[arg-type]
        partition=sizes,
        feasible=fits,
        reason=reason,
        bottleneck_ms=bottleneck * 1e3,
        throughput_tokens_per_s=thr if fits else None,
        tpot_ms=cycle * 1e3 if fits else None,
        kv_capacity_tokens=cap,
        throughput_gain=_ratio_gain(lay.replicas * lay.sequences / best.cycle, thr) if fits else None,
        kv_capacity_gain=_ratio_gain(kv_cap, cap) if fits and cap > 0 else None,
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


def _baseline(costs: Costs, best: Evaluation, engine: str, sizes: list[int], kv_cap: int) -> Baseline:
    """An engine's default cut with the degrees of ``best``: times, memory check, KV capacity, gains."""
    lay = best.layout
    ev = evaluate_cut(costs.problem(lay), sizes)
    reason = None
    if not ev.fits:
        over = [k for k, ok in enumerate(ev.stage_fits) if not ok]
        worst = max(over, key=lambda k: ev.stage_memory[k])
        st = costs.setup
        reason = (
            f"stage {worst} needs {(ev.stage_memory[worst] + st.reserve_bytes) / GIB:.1f} GiB per GPU, "
            f"limit {st.usable_bytes / GIB:.1f} GiB"
        )
    detail = stage_detail(costs, lay, sizes)
    return baseline(engine, best, sizes, detail, fits=ev.fits, bottleneck=ev.bottleneck, reason=reason, kv_cap=kv_cap)


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


def schedule(best: Evaluation, stages: list[StagePlan], *, kinds: str = "") -> Schedule:
    """The steady decode schedule of ``best``; ``kinds`` follows "on P stage(s)" in its description
    (" of mixed GPUs" on a mixed cluster)."""
    lay = best.layout
    m, p = lay.micro_batches, lay.pp
    return Schedule(
        micro_batches=m,
        micro_batch_size=lay.micro_batch_size,
        cycle_ms=best.cycle * 1e3,
        bottleneck_stage=max(range(len(stages)), key=lambda k: stages[k].times.busy_ms),
        bubble_fraction=1 - m / max(m, p),
        description=f"{m} micro-batch(es) of {lay.micro_batch_size} sequences on {p} stage(s){kinds}: one cycle = "
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


def provenance(
    costs: Costs,
    solver: SolverReport,
    solve_ms: float,
    *,
    time_source: str | None = None,
    efficiency: dict[str, object] | None = None,
) -> Provenance:
    """Where the plan's figures come from; ``time_source`` and ``efficiency`` replace the cost
    model's own (a mixed cluster names every GPU kind's)."""
    profile = costs.profile
    desc = costs.cm.describe()
    return Provenance(
        profile_id=costs.profile_id,
        profile_kind=profile.kind,
        profile_label=costs.profile_label,
        cost_model=str(desc["cost_model"]),
        time_source=str(desc["time_source"]) if time_source is None else time_source,
        efficiency=cast(dict[str, object], desc["efficiency"]) if efficiency is None else efficiency,
        solver=solver.name,
        optimal=solver.optimal,
        gap=solver.gap,
        solve_time_ms=solve_ms,
        configs_evaluated=costs.evaluated,
        ppplan_version=ppplan_version(),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )


def workload(costs: Costs, best: Evaluation, mode: str) -> WorkloadInfo:
    """The workload ``best`` is planned for (``mode`` is the batch search's)."""
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


def metrics(costs: Costs, best: Evaluation, stages: list[StagePlan], gpus: str) -> Metrics:
    """The headline figures of ``best`` cut into ``stages``, predicted on ``gpus`` (the GPU kinds)."""
    return Metrics(
        throughput_tokens_per_s=best.throughput,
        throughput_per_gpu=best.per_gpu,
        tpot_ms=best.tpot * 1e3,
        ttft_ms=best.ttft * 1e3,
        ttft_p50_ms=finite_ms(best.ttft_p50),
        ttft_p90_ms=finite_ms(best.ttft_p90),
        tokens_per_s_per_user=1.0 / best.tpot if best.tpot > 0 else None,
        capacity_requests_per_s=best.capacity * best.layout.replicas,
        kv_capacity_tokens=min(s.kv_capacity_tokens for s in stages),
        max_concurrency=min(s.kv_capacity_sequences for s in stages),
        slo_met=best.slo_met,
        predicted_by=f"{costs.profile_label} with {costs.cm.describe()['cost_model']} on {gpus}",
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
    st = costs.setup
    stages = stage_detail(costs, best.layout, best.sizes)
    kv_cap = min(s.kv_capacity_tokens for s in stages)
    baselines = [
        _baseline(costs, best, name, rule(st.layers, best.layout.pp), kv_cap) for name, rule in ENGINE_DEFAULTS.items()
    ]
    parts = {
        "cluster": _cluster(costs),
        "schedule": schedule(best, stages),
        "metrics": metrics(costs, best, stages, st.gpu.name),
        "baselines": baselines,
        "units": unit_costs(costs, best, stages),
        "provenance": provenance(costs, solver, solve_ms),
        "notes": _notes(costs, best),
    }
    return assemble_plan(costs, source, best, stages, mode, (runner_ups, front, evaluated), parts)


def assemble_plan(
    costs: Costs,
    source: ModelSource,
    best: Evaluation,
    stages: list[StagePlan],
    mode: str,
    points: tuple[list[Evaluation], list[Evaluation], list[Evaluation]],
    parts: dict[str, Any],
) -> Plan:
    """The Plan of ``best`` cut into ``stages``: what every plan derives alike (request, workload,
    degrees, the runner-ups, Pareto front and candidates of ``points`` = (runner-ups, front,
    evaluated)), the ``parts`` its planner built (cluster, schedule, metrics, baselines, units,
    provenance, notes) and the engines' exports."""
    req, profile = costs.req, costs.profile
    runner_ups, front, evaluated = points
    body: dict[str, Any] = {
        "schema_minor": PLAN_SCHEMA_MINOR,
        "model": profile.model,
        "model_source": source.source,
        "request": req.model_dump(mode="json"),
        "workload": workload(costs, best, mode),
        "objective": req.objective,
        "weight_dtype": profile.weight_dtype,
        "kv_dtype": profile.kv_dtype,
        "quantization": profile.quantization,
        "degrees": degrees_of(best.layout),
        "partition": [s.num_decoder_layers for s in stages],
        "stages": stages,
        "runner_ups": [candidate(e) for e in runner_ups],
        "pareto": pareto_points(front, best),
        "candidates": candidates([best, *evaluated], best),
        **parts,
    }
    draft = Plan(**body, exports={})
    dumped = draft.model_dump(mode="json")
    return draft.model_copy(update={"exports": export_plan(dumped, source.engine_ref)})

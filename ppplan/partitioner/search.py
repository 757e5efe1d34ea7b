"""The outer search: TP × PP × replicas × micro-batches, each scored with its exact stage cut.

For every configuration the inner problem (contiguous decoder layers into PP stages, embedding on
the first, norm + LM head on the last) is solved exactly by :func:`partitioner.dp.solve_partition`.
The steady-state schedule follows DESIGN.md: with M micro-batches of b sequences in flight on PP
stages, one cycle lasts max(M, PP) × the slowest stage's busy time per micro-batch; every sequence
advances one token per cycle (TPOT ≈ cycle) and a replica's throughput is (its sequences) / cycle.
A stage's busy time per micro-batch is its decode step plus its share of prefill work: with
chunked prefill, each cycle prefills b / output_tokens of a prompt per micro-batch on average.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from ppplan.core.costmodel import CostModel
from ppplan.core.errors import PpplanError
from ppplan.core.model_source import ModelSource
from ppplan.core.profile import Profile
from ppplan.partitioner.baselines import ENGINE_DEFAULTS
from ppplan.partitioner.dp import PartitionProblem, solve_partition, stage_bounds
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
from ppplan.partitioner.request import PlanRequest

__all__ = ["SOLVER", "InfeasibleError", "PlanningError", "plan_model", "valid_tp_degrees"]

SOLVER = "dp-exact-v1 (two-pass bottleneck DP, KV-headroom tie-break)"
GIB = 1024**3
RUNNER_UPS = 5


class PlanningError(PpplanError):
    """A request that cannot be planned; ``field`` names the offending input."""


class InfeasibleError(PlanningError):
    """No configuration fits in memory; the message says what is needed and what there is."""


def valid_tp_degrees(num_heads: int, num_kv_heads: int, gpus_per_node: int, gpu_count: int) -> list[int]:
    """TP degrees vLLM/SGLang accept: divide the attention heads, divide or are divided by the KV
    heads, and fit inside a node (a TP group never spans nodes)."""
    out = []
    for t in range(1, min(gpus_per_node, gpu_count) + 1):
        if num_heads % t or gpus_per_node % t:
            continue
        if num_kv_heads % t and t % num_kv_heads:
            continue
        out.append(t)
    return out


@dataclass(slots=True)
class _Eval:
    t: int
    p: int
    r: int
    m: int
    b: int
    seqs: int  # sequences per replica
    bottleneck: float = math.inf
    cycle: float = math.inf
    thr: float = 0.0
    tpot: float = math.inf
    ttft: float = math.inf
    slo: bool = False
    reason: str | None = None
    sizes: tuple[int, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def gpus(self) -> int:
        return self.t * self.p * self.r

    @property
    def feasible(self) -> bool:
        return math.isfinite(self.bottleneck)


class _Planner:
    def __init__(self, req: PlanRequest, profile: Profile, source: ModelSource) -> None:
        self.req = req
        self.profile = profile
        self.source = source
        self.gpu = req.gpu
        self.count = req.gpu_count
        if req.nodes is not None:
            self.gpn = self.count // req.nodes
        else:
            self.gpn = min(self.gpu.gpus_per_node, self.count)
        self.nodes = math.ceil(self.count / self.gpn)
        self.cm = CostModel(profile, self.gpu)
        self.L = profile.model.num_layers
        self.P, self.O = req.prompt_tokens, req.output_tokens
        self.ctx = req.kv_context
        self.ctx_decode = self.P + self.O // 2  # mean cached tokens while decoding
        self.usable = req.gpu_memory_utilization * self.gpu.hbm_bytes
        self.reserve = req.runtime_reserve_gib * GIB
        self.limit = self.usable - self.reserve
        self.tied = profile.model.tie_word_embeddings
        self._dec_cache: dict[tuple[int, int], np.ndarray] = {}
        self._pre_cache: dict[int, np.ndarray] = {}
        self._vec_cache: dict[tuple[int, ...], dict[str, Any]] = {}
        self._ttft_cache: dict[tuple[int, int, int], float] = {}
        self.evaluated = 0

    # ---- per-unit vectors -------------------------------------------------------------------------
    def prefill(self, t: int) -> np.ndarray:
        if t not in self._pre_cache:
            self._pre_cache[t] = self.cm.unit_times(t, "prefill", self.P, self.P)
        return self._pre_cache[t]

    def decode(self, t: int, b: int) -> np.ndarray:
        key = (t, b)
        if key not in self._dec_cache:
            self._dec_cache[key] = self.cm.unit_times(t, "decode", b, self.ctx_decode)
        return self._dec_cache[key]

    def weights(self, t: int, p: int) -> np.ndarray:
        w = self.cm.weight_bytes_per_gpu(t).copy()
        if self.tied and p == 1:  # the head shares the embedding's matrix on a single stage
            w[-1] = self.cm.replicated[-1]
        return w

    def inter_node(self, t: int, p: int, r: int) -> list[bool]:
        """For each stage boundary: does any replica's send cross nodes?"""
        per = t * p
        out = []
        for k in range(p - 1):
            out.append(any((rho * per + (k + 1) * t) % self.gpn == 0 for rho in range(r)))
        return out

    def replica_options(self, t: int, p: int) -> list[int]:
        per = t * p
        # a replica that fits in a node stays inside one; larger ones span whole nodes
        r_max = self.nodes * (self.gpn // per) if per <= self.gpn else self.count // per
        return list(range(1, r_max + 1))

    # ---- one configuration ------------------------------------------------------------------------
    def vectors(self, e: _Eval) -> dict[str, Any]:
        """Per-decoder-layer vectors of configuration ``e``, embedding and head folded into the
        first and last layer (they always share those layers' stages)."""
        key = (e.t, e.p, e.r, e.b, e.seqs)
        hit = self._vec_cache.get(key)
        if hit is not None:
            return hit
        t, p = e.t, e.p
        pre = self.prefill(t)
        dec = self.decode(t, e.b)
        busy = dec + (e.b / self.O) * pre
        tv = busy[1:-1].copy()
        tv[0] += busy[0]
        tv[-1] += busy[-1]
        w = self.weights(t, p)
        kv = self.cm.kv_bytes_per_gpu(t, e.seqs, self.ctx)
        mem = (w + kv)[1:-1].copy()
        mem[0] += w[0]
        mem[-1] += w[-1]
        ws = self.cm.workspace_bytes(t, self.req.prefill_chunk_tokens, e.seqs)
        peak = ws[1:-1].copy()
        peak[0] = max(peak[0], ws[0])
        peak[-1] = max(peak[-1], ws[-1])
        tokens = e.b + e.b * self.P / self.O
        sends = [self.cm.send_time(tokens, x) for x in self.inter_node(t, p, e.r)]
        out = {"time": tv, "memory": mem, "peak": peak, "sends": sends, "kv": kv[1:-1]}
        self._vec_cache[key] = out
        return out

    def problem(self, e: _Eval) -> PartitionProblem:
        v = self.vectors(e)
        return PartitionProblem(
            time=tuple(v["time"].tolist()),
            stages=e.p,
            memory=tuple(v["memory"].tolist()),
            memory_limit=self.limit if self.limit > 0 else 1.0,
            peak=tuple(v["peak"].tolist()),
            send_time=tuple(v["sends"]),
            kv_memory=tuple(v["kv"].tolist()),
        )

    def bound(self, e: _Eval) -> bool:
        """Fill ``e`` with optimistic numbers (a lower bound on the slowest stage); False when the
        configuration cannot fit in memory whatever the cut."""
        v = self.vectors(e)
        mem, peak, tv, sends = v["memory"], v["peak"], v["time"], v["sends"]
        if self.limit <= 0 or float(mem.sum()) / e.p > self.limit or float((mem + peak).max()) > self.limit:
            e.reason = "does not fit in memory at any cut (total / stages exceeds the limit)"
            return False
        lb = max((float(tv.sum()) + sum(sends)) / e.p, float(tv.max()), float(tv[0]) + (sends[0] if sends else 0.0))
        self._fill(e, lb)
        return True

    def _fill(self, e: _Eval, bottleneck: float) -> None:
        e.bottleneck = bottleneck
        e.cycle = max(e.m, e.p) * bottleneck
        e.tpot = e.cycle
        e.thr = e.r * e.seqs / e.cycle
        e.ttft = self.ttft(e.t, e.p, e.r)
        req = self.req
        e.slo = (req.max_tpot_ms is None or e.tpot * 1e3 <= req.max_tpot_ms) and (
            req.max_ttft_ms is None or e.ttft * 1e3 <= req.max_ttft_ms
        )

    def ttft(self, t: int, p: int, r: int) -> float:
        key = (t, p, r)
        if key not in self._ttft_cache:
            sends = sum(self.cm.send_time(self.P, x) for x in self.inter_node(t, p, r))
            self._ttft_cache[key] = float(self.prefill(t).sum()) + sends
        return self._ttft_cache[key]

    def evaluate(self, e: _Eval, *, final: bool = False) -> _Eval:
        """Solve the cut of ``e`` exactly; ``final`` adds the KV-headroom tie-break."""
        self.evaluated += 1
        res = solve_partition(self.problem(e), tie_break=final, explain=final)
        if not res.optimal:
            e.bottleneck = math.inf
            e.reason = res.reason
            e.extra["infeasible"] = res
            return e
        e.sizes = res.sizes
        self._fill(e, res.bottleneck)
        e.extra["result"] = res
        return e

    def micro_batch_options(self, p: int, seqs: int) -> list[int]:
        opts = {1, max(1, p // 2), p, 2 * p} if p > 1 else {1}
        return sorted(m for m in opts if m <= seqs)

    def violation(self, e: _Eval) -> float:
        """How far ``e`` misses the SLOs (0 when met): the worst ratio of predicted to allowed, minus 1."""
        req, worst = self.req, 0.0
        if req.max_tpot_ms is not None:
            worst = max(worst, e.tpot * 1e3 / req.max_tpot_ms - 1)
        if req.max_ttft_ms is not None:
            worst = max(worst, e.ttft * 1e3 / req.max_ttft_ms - 1)
        return worst

    def key(self, e: _Eval) -> tuple[float, ...]:
        """Sort key, larger is better: SLO met first; among misses, the closest; then the objective."""
        obj = self.req.objective
        miss = 0.0 if e.slo else -self.violation(e)
        if obj == "throughput":
            return (e.slo, miss, e.thr, -e.tpot, -e.gpus)
        if obj == "latency":
            return (e.slo, miss, -e.tpot, -e.ttft, e.thr)
        return (e.slo, miss, -e.gpus, e.thr, -e.tpot)


def _pareto(evals: list[_Eval]) -> list[_Eval]:
    pts = sorted(evals, key=lambda e: (e.tpot, -e.thr / e.gpus))
    out: list[_Eval] = []
    best_tpg = -1.0
    for e in pts:
        tpg = e.thr / e.gpus
        if tpg > best_tpg * (1 + 1e-9):
            out.append(e)
            best_tpg = tpg
    return out


def plan_model(req: PlanRequest, profile: Profile, source: ModelSource) -> Plan:
    """Search degrees and cuts for ``req`` and return the best plan with its evidence.

    Args:
        req: the request (validated).
        profile: the measured or analytic profile to plan with, already checked against the
            request's model and dtypes (:func:`ppplan.profiler.resolve.resolve_inputs`).
        source: where the model came from (for engine commands and hints).

    Raises:
        PlanningError: a pinned degree the model does not allow, a profile that does not match.
        InfeasibleError: no configuration fits in memory (the message says how much is needed).
    """
    t0 = time.perf_counter()
    pl = _Planner(req, profile, source)
    ident = profile.model
    tps = valid_tp_degrees(ident.num_attention_heads, ident.num_kv_heads, pl.gpn, pl.count)
    if req.tp is not None:
        if req.tp not in tps:
            raise PlanningError(
                "tp", rule=_tp_rule(req.tp, ident.num_attention_heads, ident.num_kv_heads, pl.gpn, pl.count, ident.name)
            )
        tps = [req.tp]
    max_pos = ident.max_position_embeddings
    if max_pos and pl.ctx > max_pos:
        raise PlanningError(
            "context",
            rule=f"{pl.ctx} tokens per sequence exceed the {max_pos} positions "
            f"{ident.name} supports (max_position_embeddings)",
        )
    if req.pp is not None and req.pp > pl.L:
        raise PlanningError(
            "pp",
            rule=f"{req.pp} stages exceed the {pl.L} decoder layers of {ident.name} "
            "(every stage holds at least one decoder layer)",
        )
    cands: list[_Eval] = []
    infeasible: list[_Eval] = []
    for t in tps:
        pps = [req.pp] if req.pp is not None else list(range(1, min(pl.L, pl.count // t) + 1))
        for p in pps:
            if t * p > pl.count:
                continue
            for r in pl.replica_options(t, p):
                seqs = math.ceil(req.concurrency / r)
                for m in pl.micro_batch_options(p, seqs):
                    e = _Eval(t=t, p=p, r=r, m=m, b=math.ceil(seqs / m), seqs=seqs)
                    (cands if pl.bound(e) else infeasible).append(e)
    # branch and bound: exact cuts in order of optimistic score; skip a configuration whose
    # optimistic score cannot reach the runner-up list and whose optimistic point is dominated
    cands.sort(key=pl.key, reverse=True)
    evals: list[_Eval] = []
    best_by_degrees: dict[tuple[int, int, int], tuple[Any, ...]] = {}
    front: list[tuple[float, float]] = []  # exact (tpot, throughput per GPU) Pareto points
    for e in cands:
        opt_key = pl.key(e)
        if len(best_by_degrees) > RUNNER_UPS:
            threshold = sorted(best_by_degrees.values(), reverse=True)[RUNNER_UPS]
            opt_tpg = e.thr / e.gpus
            dominated = any(tp_ <= e.tpot and g >= opt_tpg for tp_, g in front)
            if opt_key < threshold and dominated:
                continue
        pl.evaluate(e)
        if not e.feasible:
            infeasible.append(e)
            continue
        evals.append(e)
        k = pl.key(e)
        deg = (e.t, e.p, e.r)
        if deg not in best_by_degrees or k > best_by_degrees[deg]:
            best_by_degrees[deg] = k
        tpg = e.thr / e.gpus
        if not any(tp_ <= e.tpot and g >= tpg for tp_, g in front):
            front = [(tp_, g) for tp_, g in front if not (e.tpot <= tp_ and tpg >= g)] + [(e.tpot, tpg)]
    if not evals:
        raise _explain_infeasible(pl, tps, infeasible)
    evals.sort(key=pl.key, reverse=True)
    best = pl.evaluate(evals[0], final=True)
    if req.solver == "cpsat":
        _resolve_with_cpsat(pl, best)
    seen = {(best.t, best.p, best.r)}
    runner: list[_Eval] = []
    for e in evals[1:]:
        if (e.t, e.p, e.r) in seen:
            continue
        seen.add((e.t, e.p, e.r))
        runner.append(e)
        if len(runner) == RUNNER_UPS:
            break
    pareto = _pareto(evals)
    solve_ms = (time.perf_counter() - t0) * 1e3
    return _build_plan(pl, best, runner, pareto, solve_ms)


def _resolve_with_cpsat(pl: _Planner, best: _Eval) -> None:
    """Re-solve the chosen configuration's cut with CP-SAT (hinted with the DP cut) and adopt it."""
    from ppplan.partitioner.cpsat import solve_partition_cpsat

    res = solve_partition_cpsat(pl.problem(best), time_limit_s=10.0)
    if res.status not in ("optimal", "feasible"):  # the hint alone is feasible: only a time-out lands here
        best.extra["solver"] = (f"cp-sat {res.status} ({res.reason}); dp-exact-v1 cut kept", True, 0.0)
        return
    best.sizes = res.sizes
    pl._fill(best, res.bottleneck)
    best.extra["solver"] = (
        f"cp-sat ({res.status}, hinted with the DP cut, {res.wall_s * 1e3:.0f} ms)",
        res.status == "optimal",
        res.gap,
    )


def _tp_rule(tp: int, heads: int, kv: int, gpn: int, count: int, name: str) -> str:
    if heads % tp:
        return f"{tp} does not divide the {heads} attention heads of {name}"
    if kv % tp and tp % kv:
        return f"{tp} neither divides nor is a multiple of the {kv} KV heads of {name}"
    if tp > min(gpn, count):
        return f"{tp} exceeds the {min(gpn, count)} GPUs of a node (a TP group stays inside a node)"
    return f"{tp} does not divide the {gpn} GPUs of a node"


def _explain_infeasible(pl: _Planner, tps: list[int], infeasible: list[_Eval]) -> InfeasibleError:
    w = pl.cm.weight_bytes_per_gpu(1)
    total_w = float(w.sum()) - (float(w[-1] - pl.cm.replicated[-1]) if pl.tied else 0.0)
    kv = float(pl.cm.kv_bytes_per_gpu(1, pl.req.concurrency, pl.ctx).sum())
    have = pl.count * pl.limit
    msg = (
        f"{pl.profile.model.name} in {pl.profile.weight_dtype} needs {total_w / GIB:.1f} GiB of weights "
        f"+ {kv / GIB:.1f} GiB of KV cache ({pl.req.concurrency} sequences × {pl.ctx} tokens); "
        f"{pl.req.gpus} offer {pl.limit / GIB:.1f} GiB each after the "
        f"{pl.req.gpu_memory_utilization:g} utilisation and {pl.req.runtime_reserve_gib:g} GiB reserve "
        f"({have / GIB:.1f} GiB in all)"
    )
    if infeasible:
        biggest = max(infeasible, key=lambda e: (e.t * e.p, e.t, -e.seqs))
        biggest.reason = solve_partition(pl.problem(biggest)).reason
        msg += f"; the largest configuration tried (TP {biggest.t} × PP {biggest.p}) fails: {biggest.reason}"
        if biggest.reason and "units" in biggest.reason:
            msg = msg.replace("units", "decoder layers (0-based)")
    hints = []
    if pl.profile.weight_dtype in ("bf16", "fp16"):
        published = (pl.source.published_checkpoint_dtype or " ").split()[0]
        ckpt = f" (the published checkpoint is {published})" if published and published != "bf16" else ""
        hints.append(f"quantised weights need less: --weight-dtype fp8 or int4{ckpt}")
    if pl.req.concurrency > 1 and kv > 0.25 * have:
        hints.append("fewer sequences (--concurrency) or a shorter --context shrink the KV cache")
    if hints:
        msg += "; " + "; ".join(hints)
    return InfeasibleError("gpus", rule="does not fit: " + msg, needed_bytes=total_w + kv, available_bytes=have)


def _stage_detail(pl: _Planner, e: _Eval) -> list[StagePlan]:
    assert e.sizes is not None
    t, p = e.t, e.p
    pre = pl.prefill(t)
    dec = pl.decode(t, e.b)
    w = pl.weights(t, p)
    kv = pl.cm.kv_bytes_per_gpu(t, e.seqs, pl.ctx)
    kv_seq = pl.cm.kv_bytes_per_sequence(t, pl.ctx)
    ws = pl.cm.workspace_bytes(t, pl.req.prefill_chunk_tokens, e.seqs)
    inter = pl.inter_node(t, p, e.r)
    tokens = e.b + e.b * pl.P / pl.O
    src = f"{pl.cm.describe()['time_source']} ({pl.profile.label}, {pl.cm.describe()['cost_model']})"
    stages = []
    for k, (a, b) in enumerate(stage_bounds(e.sizes)):
        lo = 0 if k == 0 else a + 1
        hi = b + 1 if k < p - 1 else pl.L + 1
        units = slice(lo, hi + 1)
        send = pl.cm.send_time(e.b, inter[k]) if k < p - 1 else 0.0
        send_busy = pl.cm.send_time(tokens, inter[k]) if k < p - 1 else 0.0
        busy = float(dec[units].sum() + (e.b / pl.O) * pre[units].sum()) + send_busy
        weights = float(w[units].sum())
        kvb = float(kv[units].sum())
        wsb = float(ws[units].max())
        total = weights + kvb + wsb + pl.reserve
        room = pl.usable - weights - wsb - pl.reserve
        per_seq = float(kv_seq[units].sum())
        first_gpu = k * t
        stages.append(
            StagePlan(
                index=k,
                units=(lo, hi),
                decoder_layers=(a, b),
                num_decoder_layers=b - a + 1,
                has_embedding=k == 0,
                has_lm_head=k == p - 1,
                modules=[m for u in pl.profile.units[units] for m in u.modules],
                devices=list(range(first_gpu, first_gpu + t)),
                node=first_gpu // pl.gpn,
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
                    reserve_gib=pl.reserve / GIB,
                    total_gib=total / GIB,
                    limit_gib=pl.usable / GIB,
                    free_gib=(pl.usable - total) / GIB,
                ),
                # tokens of context-long sequences: with sliding-window layers a sequence costs less than
                # context × per-token bytes, so tokens = sequences × context, not room / per-token bytes
                kv_capacity_tokens=int(room / per_seq * pl.ctx) if per_seq > 0 else 0,
                kv_capacity_sequences=room / per_seq if per_seq > 0 else math.inf,
            )
        )
    return stages


def _fixed_cut(pl: _Planner, e: _Eval, sizes: list[int]) -> dict[str, Any]:
    """Evaluate an engine's cut with the same degrees: times, memory check, KV capacity."""
    pr = pl.problem(e)
    mem_lim = pr.memory_limit or math.inf
    times, fits, worst = [], True, None
    for k, (a, b) in enumerate(stage_bounds(sizes)):
        tt = sum(pr.time[a : b + 1]) + (pr.send_time[k] if pr.send_time and k < e.p - 1 else 0.0)
        mm = sum(pr.memory[a : b + 1]) + max(pr.peak[a : b + 1]) if pr.memory and pr.peak else 0.0
        times.append(tt)
        if mm > mem_lim * (1 + 1e-9):
            fits = False
            if worst is None or mm > worst[1]:
                worst = (k, mm)
    bott = max(times)
    cycle = max(e.m, e.p) * bott
    ev = _Eval(t=e.t, p=e.p, r=e.r, m=e.m, b=e.b, seqs=e.seqs, sizes=tuple(sizes))
    ev.bottleneck = bott
    stages = _stage_detail(pl, ev)
    cap = min(s.kv_capacity_tokens for s in stages)
    out: dict[str, Any] = {"bottleneck": bott, "thr": e.r * e.seqs / cycle, "tpot": cycle, "kv_cap": cap, "fits": fits}
    if worst is not None:
        out["reason"] = (
            f"stage {worst[0]} needs {(worst[1] + pl.reserve) / GIB:.1f} GiB per GPU, limit {pl.usable / GIB:.1f} GiB"
        )
    return out


def _ratio_gain(ours: float, theirs: float) -> float:
    """ours / theirs - 1, with float noise below 1e-9 shown as 0 (an equal cut is no loss)."""
    g = ours / theirs - 1
    return 0.0 if abs(g) < 1e-9 else g


def _degrees(e: _Eval) -> Degrees:
    return Degrees(tp=e.t, pp=e.p, replicas=e.r, micro_batches=e.m, micro_batch_size=e.b, gpus_used=e.gpus)


def _candidate(e: _Eval) -> Candidate:
    return Candidate(
        degrees=_degrees(e),
        partition=list(e.sizes) if e.sizes else None,
        throughput_tokens_per_s=e.thr,
        throughput_per_gpu=e.thr / e.gpus,
        tpot_ms=e.tpot * 1e3,
        ttft_ms=e.ttft * 1e3,
        slo_met=e.slo,
    )


def _build_plan(pl: _Planner, best: _Eval, runner: list[_Eval], pareto: list[_Eval], solve_ms: float) -> Plan:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("ppplan")
    except PackageNotFoundError:
        ver = "0+unknown"
    req = pl.req
    solver_name, optimal, gap = best.extra.get("solver", (SOLVER, True, 0.0))
    stages = _stage_detail(pl, best)
    desc = pl.cm.describe()
    label = pl.profile.label
    kv_cap = min(s.kv_capacity_tokens for s in stages)
    bott_stage = max(range(len(stages)), key=lambda k: stages[k].times.busy_ms)
    bubble = 1 - best.m / max(best.m, best.p)
    metrics = Metrics(
        throughput_tokens_per_s=best.thr,
        throughput_per_gpu=best.thr / best.gpus,
        tpot_ms=best.tpot * 1e3,
        ttft_ms=best.ttft * 1e3,
        kv_capacity_tokens=kv_cap,
        max_concurrency=min(s.kv_capacity_sequences for s in stages),
        slo_met=best.slo,
        predicted_by=f"{label} with {desc['cost_model']} on {pl.gpu.name}",
    )
    baselines = []
    for name, rule in ENGINE_DEFAULTS.items():
        sizes = rule(pl.L, best.p)
        fx = _fixed_cut(pl, best, sizes)
        baselines.append(
            Baseline(
                engine=name,  # type: ignore[arg-type]
                partition=sizes,
                feasible=fx["fits"],
                reason=fx.get("reason"),
                bottleneck_ms=fx["bottleneck"] * 1e3,
                throughput_tokens_per_s=fx["thr"] if fx["fits"] else None,
                tpot_ms=fx["tpot"] * 1e3 if fx["fits"] else None,
                kv_capacity_tokens=fx["kv_cap"],
                throughput_gain=_ratio_gain(best.thr, fx["thr"]) if fx["fits"] else None,
                kv_capacity_gain=_ratio_gain(kv_cap, fx["kv_cap"]) if fx["fits"] and fx["kv_cap"] > 0 else None,
            )
        )
    notes = []
    if not best.slo:
        notes.append("no configuration meets the SLOs; this is the closest one by the objective")
    if pl.profile.kind == "measured" and not pl.cm.measured:
        notes.append(
            f"the profile was measured on {pl.profile.device}, not {pl.gpu.name}: its bytes are used, "
            "its times are not (analytic roofline instead)"
        )
    if pl.profile.quantization:
        notes.append(f"weights: {pl.profile.quantization}")
    if pl.profile.provenance.get("notes"):
        notes.append(str(pl.profile.provenance["notes"]))
    notes.append(
        "TTFT is for one request on an idle replica (no queueing); TPOT and throughput are the "
        "steady state with prefill chunks amortised over the decode cycle"
    )
    sched = Schedule(
        micro_batches=best.m,
        micro_batch_size=best.b,
        cycle_ms=best.cycle * 1e3,
        bottleneck_stage=bott_stage,
        bubble_fraction=bubble,
        description=f"{best.m} micro-batch(es) of {best.b} sequences on {best.p} stage(s): one cycle = "
        f"max(M, PP) × slowest stage = {max(best.m, best.p)} × {best.bottleneck * 1e3:.3f} ms",
    )
    body: dict[str, Any] = {
        "model": pl.profile.model,
        "model_source": pl.source.source,
        "request": req.model_dump(mode="json"),
        "cluster": ClusterInfo(
            gpu=pl.gpu.name,
            count=pl.count,
            nodes=pl.nodes,
            gpus_per_node=pl.gpn,
            hbm_gib=pl.gpu.hbm_bytes / GIB,
            usable_gib=pl.usable / GIB,
            nvlink_gbps=pl.gpu.nvlink_bw / 1e9,
            network_gbps=pl.gpu.network_bw / 1e9,
        ),
        "workload": WorkloadInfo(prompt_tokens=pl.P, output_tokens=pl.O, concurrency=req.concurrency, context=pl.ctx),
        "objective": req.objective,
        "weight_dtype": pl.profile.weight_dtype,
        "kv_dtype": pl.profile.kv_dtype,
        "quantization": pl.profile.quantization,
        "degrees": _degrees(best),
        "partition": [s.num_decoder_layers for s in stages],
        "stages": stages,
        "schedule": sched,
        "metrics": metrics,
        "baselines": baselines,
        "runner_ups": [_candidate(e) for e in runner],
        "pareto": [_candidate(e) for e in pareto],
        "provenance": Provenance(
            profile_id=pl.profile.profile_id,
            profile_kind=pl.profile.kind,
            profile_label=label,
            cost_model=str(desc["cost_model"]),
            time_source=str(desc["time_source"]),
            efficiency=cast(dict[str, object], desc["efficiency"]),
            solver=solver_name,
            optimal=optimal,
            gap=gap,
            solve_time_ms=solve_ms,
            configs_evaluated=pl.evaluated,
            ppplan_version=ver,
            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        ),
        "notes": notes,
    }
    draft = Plan(**body, exports={})
    dumped = draft.model_dump(mode="json")
    return draft.model_copy(update={"exports": export_plan(dumped, pl.source.engine_ref)})

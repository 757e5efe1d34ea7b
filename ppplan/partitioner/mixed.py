"""``ppplan plan`` on a mixed cluster (several GPU kinds, or nodes of unequal size): one pipeline.

The search chooses one TP degree for every stage (what vLLM and SGLang run: valid for the model's
heads and every group's node size), PP, the batch, and with them, exactly, how many stages each
GPU group hosts, the order of the groups along the pipeline and the layer cut with each stage's own
speed and memory limit (:func:`partitioner.hetero.solve_hetero`, PP pinned, inside
:class:`partitioner.mixed_costs.MixedCosts`).

The batch is decided as on one GPU kind (:mod:`partitioner.batch`: micro-batches of b sequences,
S = b × PP of them as PP micro-batches; the smallest b that sustains a request rate, 1 for the
latency objective, a pinned concurrency as given), with one difference: where the normal search
takes the largest b within the SLOs, this one takes the b that ranks best within them. On one GPU
kind the two are the same; on a mixed cluster a large batch's KV cache leaves no room to give the
faster kind more layers, the cut is forced towards an even one and throughput falls (70B on
8×H100 + 8×A100-80GB: TP 2 × PP 8 gives 6,200 tokens/s at b = 96, 4,700 at b = 128). Degrees and
grid batches are visited jointly in branch-and-bound order (the optimistic bound adds
:meth:`MixedCosts.memory_bound` to :mod:`partitioner.bounds`'); the leaders' batches are then
refined between the grid points. The Pareto front covers the degrees the search solved.

One replica: GPUs the pipeline does not use stay idle (replicas across mixed groups are not
planned). The ranking is :func:`partitioner.bounds.rank_key`'s, except that the throughput
objective ranks output tokens/s per GPU *of the cluster* (idle GPUs count): with a single pipeline
that is its throughput, so a pipeline over both an H100 and an A100 node is preferred to an
H100-only one that leaves the A100s idle. The Plan is assembled in :mod:`partitioner.mixed_plan`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from ppplan.core.model_source import ModelSource
from ppplan.core.profile import Profile
from ppplan.partitioner.assembly import SolverReport
from ppplan.partitioner.batch import BatchSearch, Degrees3, bisect_largest
from ppplan.partitioner.bounds import RUNNER_UPS, TIE_EVALUATIONS, lower_bound, pareto, rank_key
from ppplan.partitioner.costs import Costs, Evaluation
from ppplan.partitioner.explain import explain_slo_miss
from ppplan.partitioner.hetero import HeteroCut, HeteroProblem, solve_hetero
from ppplan.partitioner.mixed_costs import MixedCosts
from ppplan.partitioner.mixed_plan import MixedChoice, build_mixed_plan
from ppplan.partitioner.plan import Plan
from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.space import GIB, InfeasibleError, Layout, PlanningError, valid_tp_degrees

__all__ = ["MIXED_SOLVER", "mixed_optimistic", "mixed_rank_key", "mixed_tp_degrees", "plan_mixed"]

MIXED_SOLVER = (
    "hetero-exact-v1 (exact DP over stage assignments per GPU group: stages per group, group order and "
    "cut; KV-headroom tie-break)"
)
REFINED = 3
"""Leading choices whose batch is refined between the grid points (as :mod:`partitioner.bounds`)."""


def mixed_tp_degrees(req: PlanRequest, profile: Profile, costs: MixedCosts) -> list[int]:
    """TP degrees valid for the model's heads and every group's node size (the request's pin checked).

    Raises:
        PlanningError: a pinned TP that is not one of them, a context beyond the model's positions,
            a pinned PP above the layers or the stage slots of the cluster.
    """
    ident = profile.model
    groups = costs.cluster.groups
    sets = [
        set(valid_tp_degrees(ident.num_attention_heads, ident.num_kv_heads, g.gpus_per_node, g.count)) for g in groups
    ]
    tps = sorted(set.intersection(*sets))
    if req.tp is not None:
        if req.tp not in tps:
            raise PlanningError(
                "tp",
                req.tp,
                rule=f"one TP degree runs every stage of a mixed cluster; valid for the {ident.num_attention_heads} "
                f"heads / {ident.num_kv_heads} KV heads of {ident.name} and nodes of "
                f"{', '.join(str(g.gpus_per_node) for g in groups)} GPUs: {', '.join(map(str, tps))}",
            )
        tps = [req.tp]
    st = costs.setup
    max_pos = ident.max_position_embeddings
    if max_pos and st.context > max_pos:
        raise PlanningError(
            "context",
            rule=f"{st.context} tokens per sequence exceed the {max_pos} positions {ident.name} supports",
        )
    if req.pp is not None:
        cap = max(costs.slots(t) for t in tps)
        if req.pp > min(st.layers, cap):
            raise PlanningError(
                "pp",
                req.pp,
                rule=f"at most {min(st.layers, cap)} stages: {st.layers} decoder layers, {cap} stage slots of "
                f"TP {min(tps)} on {costs.cluster.text}",
            )
    return tps


def mixed_optimistic(costs: Costs, lay: Layout) -> Evaluation:
    """:func:`partitioner.bounds.optimistic` with the memory-and-speed bound of
    :meth:`MixedCosts.memory_bound` on the slowest stage as well."""
    assert isinstance(costs, MixedCosts)
    if not costs.fits(lay.tp, lay.pp, lay.sequences):
        return Evaluation(layout=lay, reason="does not fit in memory at any placement (the largest stage slots)")
    bound = max(lower_bound(costs, lay), costs.memory_bound(lay))
    if not math.isfinite(bound):
        return Evaluation(layout=lay, reason="the stage slots cannot hold every layer")
    return costs.scored(lay, bound)


def _degrees(req: PlanRequest, costs: MixedCosts, tps: list[int]) -> list[Degrees3]:
    """(TP, PP, 1) for every TP and every PP the cluster's stage slots and the layers allow."""
    out = []
    for t in tps:
        cap = min(costs.setup.layers, costs.slots(t))
        pps = [req.pp] if req.pp is not None else list(range(1, cap + 1))
        out += [(t, p, 1) for p in pps if 1 <= p <= cap]
    return out


def _bucket(x: float) -> int:
    """Throughput in 0.5 % steps, as :func:`partitioner.bounds.rank_key` buckets per-GPU throughput."""
    return math.floor(math.log(x) / math.log(1.005)) if x > 0 else -(10**9)


def mixed_rank_key(req: PlanRequest, e: Evaluation, cluster_gpus: int) -> tuple[float, ...]:
    """:func:`rank_key`, with the throughput objective over every GPU of the cluster (``cluster_gpus``):
    the pipeline's throughput / cluster GPUs, then per GPU used."""
    key = rank_key(req, e)
    if req.objective != "throughput":
        return key
    return (key[0], key[1], _bucket(e.throughput / cluster_gpus), e.per_gpu, -e.tpot, -e.gpus)


_Key = Callable[[Evaluation], tuple[float, ...]]


def _search(costs: MixedCosts, degs: list[Degrees3], batches: BatchSearch) -> tuple[list[Evaluation], list[Evaluation]]:
    """(feasible exact choices best first, one per degrees; infeasible evaluations)."""
    req, n = costs.req, costs.cluster.count
    key: _Key = lambda e: mixed_rank_key(req, e, n)  # noqa: E731
    if batches.mode == "largest":
        return _best_batches(costs, degs, batches, key)
    return _batch_rule(degs, batches, key)


def _best_batches(
    costs: MixedCosts, degs: list[Degrees3], batches: BatchSearch, key: _Key
) -> tuple[list[Evaluation], list[Evaluation]]:
    """Largest-batch mode: per degrees the batch that ranks best within the SLOs, by branch and
    bound over (degrees, grid batch) pairs jointly, then refined between the grid points.

    On one GPU kind that is the largest batch that fits (throughput grows with the batch); on a
    mixed cluster memory at large batches forces an even cut onto the slower kind and throughput
    falls, so the largest batch is not the best one.
    """
    items: list[tuple[tuple[float, ...], Degrees3, int]] = []
    infeasible: list[Evaluation] = []
    for d in degs:
        grid = batches.grid(d)
        if not grid:
            infeasible.append(batches.optimistic(d, 1))
        for b in grid:
            opt = batches.optimistic(d, b)
            if opt.feasible:
                items.append((key(opt), d, b))
    items.sort(key=lambda x: x[0], reverse=True)
    best: dict[Degrees3, Evaluation] = {}
    for k_opt, d, b in items:
        if len(best) > RUNNER_UPS and k_opt < sorted((key(e) for e in best.values()), reverse=True)[RUNNER_UPS]:
            break  # an exact cut is never better than its optimistic bound
        if d in best and key(best[d]) >= k_opt:
            continue
        e = batches.exact(d, b)
        if not e.feasible:
            infeasible.append(e)
        elif d not in best or key(e) > key(best[d]):
            best[d] = e
    evals = sorted(best.values(), key=key, reverse=True)
    evals[:REFINED] = [_refine(costs, batches, e, key) for e in evals[:REFINED]]
    evals.sort(key=key, reverse=True)
    return evals, infeasible


def _refine(costs: MixedCosts, batches: BatchSearch, e: Evaluation, key: _Key) -> Evaluation:
    """``e``'s batch moved up towards the next grid point: the largest batch at which ``e``'s own
    placement and cut still fit and rank no worse (bisection, no DP), then solved exactly there
    (the objective rises with the batch until memory forces a more even cut)."""
    d, b0 = e.layout.degrees, e.layout.micro_batch_size
    cut = costs.cuts.get(e.layout)
    nxt = min((g for g in batches.grid(d) if g > b0), default=b0)
    if cut is None or nxt <= b0 + 1:
        return e

    def ok(b: int) -> bool:
        at = costs.at_placement(batches.layout(d, b), cut.order, cut.counts, cut.sizes)
        return at is not None and key(at) >= key(e)

    lo = bisect_largest(ok, b0, nxt - 1)
    return e if lo == b0 else max(e, batches.exact(d, lo), key=key)


def _batch_rule(degs: list[Degrees3], batches: BatchSearch, key: _Key) -> tuple[list[Evaluation], list[Evaluation]]:
    """Rate, latency and pinned modes: :func:`partitioner.bounds.branch_and_bound` with
    :class:`BatchSearch`'s batch rule, ranked by ``key``."""
    cands: list[tuple[Degrees3, int, Evaluation]] = []
    infeasible: list[Evaluation] = []
    for d in degs:
        b, opt = batches.optimistic_choice(d)
        if opt.feasible:
            cands.append((d, b, opt))
        else:
            infeasible.append(opt)
    cands.sort(key=lambda c: key(c[2]), reverse=True)
    evals: list[Evaluation] = []
    for d, b, opt in cands:
        if len(evals) > RUNNER_UPS:
            threshold = sorted((key(e) for e in evals), reverse=True)[RUNNER_UPS]
            k = key(opt)
            if k < threshold:
                break  # an exact cut is never better than its optimistic bound
            if k[:3] == threshold[:3] and len(evals) >= TIE_EVALUATIONS:
                continue
        e = batches.exact_choice(d, b)
        (evals if e.feasible else infeasible).append(e)
    evals.sort(key=key, reverse=True)
    evals[:REFINED] = [batches.refine(e) for e in evals[:REFINED]]
    evals.sort(key=key, reverse=True)
    return evals, infeasible


def _infeasible(costs: MixedCosts, tps: list[int], tried: list[Evaluation]) -> InfeasibleError:
    """No pipeline fits: what the model needs, what each TP's stage slots hold, the solver's reason."""
    req, profile = costs.req, costs.profile
    w = float(costs.cm.weight_bytes_per_gpu(1).sum())
    msg = (
        f"no pipeline over {costs.cluster.text} fits: {profile.model.name} in {profile.weight_dtype} needs "
        f"{w / GIB:.1f} GiB of weights; " + "; ".join(costs.shortfall_text(t) for t in tps)
    )
    with_reason = [e for e in tried if e.reason]
    if with_reason:
        big = max(with_reason, key=lambda e: (e.layout.tp * e.layout.pp, -e.layout.sequences))
        msg += f"; the largest configuration tried (TP {big.layout.tp} × PP {big.layout.pp}): {big.reason}"
    hints = ["more or larger GPUs", "--weight-dtype fp8 or int4" if profile.weight_dtype in ("bf16", "fp16") else ""]
    if req.concurrency is not None or req.context is not None:
        hints.append("fewer sequences (--concurrency) or a shorter --context")
    msg += "; try " + ", ".join(h for h in hints if h)
    return InfeasibleError("gpus", rule=msg)


def plan_mixed(req: PlanRequest, profile: Profile, source: ModelSource) -> Plan:
    """Plan one pipeline over the mixed cluster of ``req`` (see the module docstring).

    Raises:
        PlanningError: a pinned degree the cluster or the model does not allow; no configuration
            meets the SLOs (unless the concurrency is pinned).
        InfeasibleError: no pipeline fits in memory.
    """
    t0 = time.perf_counter()
    costs = MixedCosts(req, profile, req.cluster_spec)
    tps = mixed_tp_degrees(req, profile, costs)
    degs = _degrees(req, costs, tps)
    batches = BatchSearch(costs, mixed_optimistic)
    evals, infeasible = _search(costs, degs, batches)
    if not evals:
        raise _infeasible(costs, tps, infeasible)
    first = evals[0]
    if not first.slo_met and req.concurrency is None:
        raise explain_slo_miss(costs, first)
    pr = costs.hetero_problem(first.layout)
    sol = solve_hetero(pr, final=True)
    assert sol.cut is not None  # the same instance fitted when it was scored
    cut, solver = sol.cut, SolverReport(name=MIXED_SOLVER, optimal=True, gap=0.0)
    if req.solver == "cpsat":
        cut, solver = _resolve_with_cpsat(pr, cut)
    best = costs.score(first.layout, cut)
    # the front over the degrees the search solved (their placements are known: no new DP per point)
    seen = sorted({e.layout.degrees for e in batches.exact_evaluations if e.feasible})
    front = pareto(costs, seen, batches, [best])
    choice = MixedChoice(
        costs=costs,
        best=best,
        problem=pr,
        solution=sol,
        cut=cut,
        runner_ups=_runner_ups([best, *evals[1:]]),
        front=front,
        evaluated=batches.exact_evaluations,
        mode=batches.mode,
        solver=solver,
    )
    return build_mixed_plan(choice, source, (time.perf_counter() - t0) * 1e3)


def _runner_ups(evals: list[Evaluation]) -> list[Evaluation]:
    """The best evaluation of each next-best TP × PP, up to ``RUNNER_UPS``."""
    seen = {evals[0].layout.degrees[:2]}
    out: list[Evaluation] = []
    for e in evals[1:]:
        if e.layout.degrees[:2] not in seen:
            seen.add(e.layout.degrees[:2])
            out.append(e)
    return out[:RUNNER_UPS]


def _resolve_with_cpsat(pr: HeteroProblem, cut: HeteroCut) -> tuple[HeteroCut, SolverReport]:
    """Re-solve the chosen placement's cut with CP-SAT (hinted with the DP cut) and adopt it."""
    from ppplan.partitioner.hetero_cpsat import solve_hetero_cpsat  # lazy: ortools is heavy, the default is the DP

    res = solve_hetero_cpsat(pr, cut.order, cut.counts, time_limit_s=10.0)
    if res.cut is None:  # the hint alone is feasible: only a time-out lands here
        return cut, SolverReport(name=f"cp-sat {res.status}; {MIXED_SOLVER} cut kept", optimal=True, gap=0.0)
    report = SolverReport(
        name=f"cp-sat on the exact placement ({res.status}, hinted with the DP cut, {res.wall_s * 1e3:.0f} ms)",
        optimal=res.status == "optimal",
        gap=res.gap,
    )
    return res.cut, report

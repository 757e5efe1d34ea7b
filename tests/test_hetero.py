"""Mixed-cluster placement: the exact search equals brute force; a 70B pipeline over H100 + A100."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppplan.core.costmodel import CostModel
from ppplan.core.errors import PpplanError
from ppplan.core.gpus import GPUSpec
from ppplan.partitioner.cluster import parse_cluster_gpus
from ppplan.partitioner.hetero import (
    HeteroProblem,
    KindVectors,
    StageGroup,
    cluster_problem,
    evaluate_hetero_cut,
    solve_hetero,
    solve_hetero_by_pp,
    solve_placement,
)

GIB = 1024**3
REL = 1e-9


# ---- brute force, written independently of the solver (plain slices, no prefix sums) -------------
def _stage_groups(pr: HeteroProblem, order: tuple[int, ...], counts: tuple[int, ...]) -> list[tuple[int, float]]:
    out = []
    for pos, (g, c) in enumerate(zip(order, counts, strict=True)):
        grp = pr.groups[g]
        for q in range(c):
            if q < c - 1:
                send = grp.send_inter if (q + 1) % grp.stages_per_node == 0 else grp.send_intra
            elif pos + 1 < len(order):
                send = pr.send_cross[g][order[pos + 1]]
            else:
                send = 0.0
            out.append((g, send))
    return out


def _brute_cut(pr: HeteroProblem, stages: list[tuple[int, float]], sizes: list[int]) -> tuple[float, float] | None:
    """(bottleneck, smallest KV headroom) of a cut, None when a stage does not fit."""
    worst, head, a = 0.0, math.inf, 0
    for (g, send), s in zip(stages, sizes, strict=True):
        grp = pr.groups[g]
        mem = sum(grp.memory[a : a + s]) + (max(grp.peak[a : a + s]) if grp.peak else 0.0)
        if mem > grp.memory_limit * (1 + 1e-9):
            return None
        worst = max(worst, sum(grp.time[a : a + s]) + send)
        kv = sum(grp.kv[a : a + s]) if grp.kv else 0.0
        head = min(head, (grp.memory_limit - (mem - kv)) / kv if kv > 0 else math.inf)
        a += s
    return worst, head


def _cuts(n: int, p: int) -> list[list[int]]:
    out = []
    for c in itertools.combinations(range(1, n), p - 1):
        b = [0, *c, n]
        out.append([b[i + 1] - b[i] for i in range(p)])
    return out


def _brute(pr: HeteroProblem) -> list[tuple[float, int, tuple[int, ...], tuple[int, ...], list[int]]]:
    """Every fitting (bottleneck, PP, order, counts, sizes) over all orders × counts × cuts."""
    n, out = pr.layers, []
    for r in range(1, min(n, len(pr.groups)) + 1):  # every group used hosts at least one layer
        for order in itertools.permutations(range(len(pr.groups)), r):
            caps = [pr.groups[g].max_stages for g in order]
            for counts in itertools.product(*(range(1, c + 1) for c in caps)):
                p = sum(counts)
                if p > n or (pr.pp is not None and p != pr.pp):
                    continue
                stages = _stage_groups(pr, order, counts)
                for sizes in _cuts(n, p):
                    got = _brute_cut(pr, stages, sizes)
                    if got is not None:
                        out.append((got[0], p, order, counts, sizes))
    return out


# ---- random small clusters ---------------------------------------------------------------------
_val = st.floats(0.0, 1.0, allow_nan=False).map(lambda v: round(v, 3))


@st.composite
def problems(draw: st.DrawFn) -> HeteroProblem:
    n = draw(st.integers(1, 8))
    k = draw(st.integers(1, 3))
    groups = []
    for g in range(k):
        vec = st.lists(_val, min_size=n, max_size=n).map(tuple)
        groups.append(
            StageGroup(
                name=f"kind{g}",
                time=draw(vec),
                memory=draw(vec),
                peak=draw(st.none() | vec),
                kv=draw(st.none() | vec),
                memory_limit=draw(st.floats(0.3, 5.0)),
                stages_per_node=draw(st.integers(0, 2)),
                nodes=draw(st.integers(1, 2)),
                send_intra=draw(_val) / 10,
                send_inter=draw(_val) / 2,
            )
        )
    cross = tuple(tuple(draw(_val) / 2 for _ in range(k)) for _ in range(k))
    cap = min(n, sum(g.max_stages for g in groups))
    pp = draw(st.none() | st.integers(1, cap)) if cap >= 1 else None
    return HeteroProblem(tp=1, groups=tuple(groups), send_cross=cross, pp=pp)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_equals_brute_force(pr: HeteroProblem) -> None:
    every = _brute(pr)
    sol = solve_hetero(pr)
    if not every:
        assert not sol.optimal and sol.cut is None and sol.reason
        assert solve_hetero_by_pp(pr) == {}
        return
    best = min(v for v, *_ in every)
    assert sol.optimal and sol.cut is not None
    assert sol.bottleneck == pytest.approx(best, rel=REL, abs=1e-12)
    # its numbers are the evaluator's, and it fits
    ev = evaluate_hetero_cut(pr, sol.cut.order, sol.cut.counts, sol.cut.sizes)
    assert ev == sol.cut and ev.fits
    # ties go to fewer stages: no fitting cut with fewer stages is as fast
    assert not any(p < sol.pp and v <= best * (1 + REL) + 1e-12 for v, p, *_ in every)
    assert sum(sol.stages_per_group) == sol.pp
    # the KV tie-break: the best smallest headroom among this placement's optimal cuts
    stages = _stage_groups(pr, sol.cut.order, sol.cut.counts)
    heads = [
        h
        for sizes in _cuts(pr.layers, sol.pp)
        if (got := _brute_cut(pr, stages, sizes)) is not None and got[0] <= sol.bottleneck * (1 + REL) + 1e-12
        for h in [got[1]]
    ]
    if all(pr.groups[g].kv is not None for g in sol.cut.order) and math.isfinite(max(heads)):
        assert sol.headroom == pytest.approx(max(heads), rel=1e-6)
    # the best per PP, from one search
    by_pp = solve_hetero_by_pp(pr)
    want = {p: min(v for v, q, *_ in every if q == p) for p in {q for _, q, *_ in every}}
    assert sorted(by_pp) == sorted(want)
    for p, s in by_pp.items():
        assert s.pp == p and s.bottleneck == pytest.approx(want[p], rel=REL, abs=1e-12)


def test_many_groups() -> None:
    """12 groups: prefix ids no longer fit in int64 and become Python integers; still exact."""
    rng = np.random.default_rng(7)
    groups = tuple(
        StageGroup(
            name=f"kind{g}",
            time=tuple(rng.uniform(0.5, 2.0, 4).round(3).tolist()),
            memory=(1.0,) * 4,
            memory_limit=float(rng.integers(1, 4)),
            stages_per_node=1,
            send_intra=0.01,
        )
        for g in range(12)
    )
    cross = tuple(tuple(float(v) for v in rng.uniform(0.0, 0.3, 12).round(3)) for _ in range(12))
    pr = HeteroProblem(tp=1, groups=groups, send_cross=cross)
    sol = solve_hetero(pr)
    best = min(v for v, *_ in _brute(pr))
    assert sol.bottleneck == pytest.approx(best, rel=REL)
    assert sol.cut is not None and len(sol.cut.order) == sol.pp


def test_engine_baselines_on_the_same_placement() -> None:
    g = StageGroup(name="fast", time=(1.0,) * 6, memory=(1.0,) * 6, memory_limit=4.0, stages_per_node=1)
    slow = StageGroup(name="slow", time=(2.0,) * 6, memory=(1.0,) * 6, memory_limit=2.0, stages_per_node=1)
    pr = HeteroProblem(tp=1, groups=(g, slow), send_cross=((0.0, 0.0), (0.0, 0.0)))
    sol = solve_hetero(pr)
    assert sol.cut is not None and sol.cut.sizes == (4, 2) and sol.bottleneck == 4.0
    assert [p.gpu for p in sol.cut.places] == ["fast", "slow"]
    even = sol.baselines["vllm"]
    assert even.sizes == (3, 3) and not even.fits  # 3 layers exceed the slow kind's 2 bytes
    assert even.bottleneck == 6.0


def test_nodes_and_sends() -> None:
    """Stages fill a group's nodes in order; the boundary between its nodes pays the network."""
    g = StageGroup(
        name="k",
        time=(1.0,) * 4,
        memory=(0.0,) * 4,
        memory_limit=1.0,
        stages_per_node=2,
        nodes=2,
        send_intra=0.1,
        send_inter=0.5,
    )
    pr = HeteroProblem(tp=4, groups=(g,), send_cross=((0.0,),), pp=4)
    sol = solve_hetero(pr)
    assert sol.cut is not None
    assert [(p.node, p.slot) for p in sol.cut.places] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert sol.cut.stage_sends == (0.1, 0.5, 0.1, 0.0)
    assert sol.bottleneck == 1.5


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"tp": 0}, "tp"),
        ({"groups": ()}, "groups"),
        ({"send_cross": ((0.0,),)}, "send_cross"),
        ({"send_cross": ((0.0, -1.0), (0.0, 0.0))}, "send_cross[0][1]"),
        ({"pp": 9}, "pp"),
    ],
)
def test_invalid_problems(kw: dict[str, object], field: str) -> None:
    g = StageGroup(name="k", time=(1.0,) * 3, memory=(0.0,) * 3, memory_limit=1.0, stages_per_node=1)
    args: dict[str, object] = {"tp": 1, "groups": (g, g), "send_cross": ((0.0, 0.0), (0.0, 0.0))}
    args.update(kw)
    with pytest.raises(PpplanError) as err:
        HeteroProblem(**args)  # type: ignore[arg-type]
    assert err.value.field == field
    with pytest.raises(PpplanError, match=r"groups\[0\]\.time\[1\]"):
        HeteroProblem(tp=1, groups=(replace(g, time=(1.0, math.nan, 1.0)),), send_cross=((0.0,),))
    with pytest.raises(PpplanError, match=r"groups\[0\]\.memory"):
        HeteroProblem(tp=1, groups=(replace(g, memory=(1.0,)),), send_cross=((0.0,),))


# ---- a 70B-like pipeline over 8×H100 + 8×A100-80GB --------------------------------------------
def _kind(cm: CostModel, gpu: GPUSpec, tp: int, batch: int = 16, sequences: int = 64) -> KindVectors:
    """Per-layer vectors as the search builds them (embedding and head folded into the end layers)."""
    busy = cm.unit_times(tp, "decode", batch, 2304) + (batch / 512) * cm.unit_times(tp, "prefill", 2048, 2048)
    w, kv = cm.weight_bytes_per_gpu(tp), cm.kv_bytes_per_gpu(tp, sequences, 2560)
    tv, mem = busy[1:-1].copy(), (w + kv)[1:-1].copy()
    tv[0] += busy[0]
    tv[-1] += busy[-1]
    mem[0] += w[0]
    mem[-1] += w[-1]
    return KindVectors(
        time=tuple(tv.tolist()),
        memory=tuple(mem.tolist()),
        kv=tuple(kv[1:-1].tolist()),
        memory_limit=0.9 * gpu.hbm_bytes - 2 * GIB,
    )


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_70b_h100_stages_hold_more_layers(tp: int) -> None:
    from ppplan.profiler.analytic import analytic_profile, model_spec  # lazy: test-only, the shipped spec

    prof = analytic_profile(model_spec("llama-3.1-70b"))
    cluster = parse_cluster_gpus("8xH100+8xA100-80GB", nodes=2)
    kinds = {g.gpu.name: _kind(CostModel(prof, g.gpu), g.gpu, tp) for g in cluster.groups}
    batch_tokens = 16 + 16 * 2048 / 512
    pr = cluster_problem(cluster, tp, kinds, send_bytes=prof.units[0].act_bytes_per_token * batch_tokens)
    # the boundary between the kinds runs at the slower NIC (A100's 200 Gb/s)
    assert pr.send_cross[0][1] > pr.groups[0].send_intra
    sol = solve_hetero(pr)
    assert sol.optimal and sol.cut is not None
    assert sol.stages_per_group == (8 // tp, 8 // tp)  # both nodes used
    sizes = {k: [s for s, p in zip(sol.cut.sizes, sol.cut.places, strict=True) if p.gpu == k] for k in kinds}
    assert min(sizes["H100-SXM-80GB"]) > max(sizes["A100-80GB"])
    assert {p.node for p in sol.cut.places} == {0}  # one node per group at 8 GPUs each
    assert [p.slot for p in sol.cut.places if p.group == 0] == list(range(8 // tp))
    even = sol.baselines["vllm"]
    assert even.sizes == tuple([80 // sol.pp] * sol.pp)
    assert not even.fits or even.bottleneck > sol.bottleneck * 1.1
    assert np.isfinite(sol.headroom)
    with pytest.raises(PpplanError, match="no cost vectors"):
        cluster_problem(cluster, tp, {"H100-SXM-80GB": kinds["H100-SXM-80GB"]}, send_bytes=1.0)


# ---- one placement: the exact cut and CP-SAT's cross-check ---------------------------------------
_int = st.integers(0, 9).map(float)


@st.composite
def integer_problems(draw: st.DrawFn) -> HeteroProblem:
    """Instances whose memory is whole bytes (CP-SAT keeps bytes as integers)."""
    pr = draw(problems())
    n = pr.layers
    groups = tuple(
        replace(
            g,
            memory=tuple(draw(st.lists(_int, min_size=n, max_size=n))),
            peak=None,
            memory_limit=float(draw(st.integers(1, 30))),
        )
        for g in pr.groups
    )
    return replace(pr, groups=groups)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(integer_problems())
def test_cpsat_agrees_on_the_chosen_placement(pr: HeteroProblem) -> None:
    from ppplan.partitioner.hetero_cpsat import solve_hetero_cpsat  # lazy: OR-Tools loads in ~1 s

    sol = solve_hetero(pr)
    res = solve_hetero_cpsat(pr, time_limit_s=10.0)
    if sol.cut is None:
        assert res.status == "infeasible" and res.cut is None
        return
    assert res.status == "optimal" and res.cut is not None and res.cut.fits
    assert (res.cut.order, res.cut.counts) == (sol.cut.order, sol.cut.counts)
    # CP-SAT's times are integers of 1e-7 × the largest stage time: equal up to that resolution
    assert res.cut.bottleneck == pytest.approx(sol.bottleneck, rel=1e-5, abs=1e-9)
    assert res.gap < 1e-5
    exact = solve_placement(pr, sol.cut.order, sol.cut.counts, final=False)
    assert exact is not None and exact.bottleneck == sol.bottleneck


def test_solve_placement_without_a_fitting_cut() -> None:
    big = StageGroup(name="k", time=(1.0,) * 3, memory=(2.0,) * 3, memory_limit=3.0, stages_per_node=2)
    pr = HeteroProblem(tp=1, groups=(big,), send_cross=((0.0,),))
    assert solve_placement(pr, (0,), (1,)) is None  # 6 bytes on one stage of 3
    assert solve_placement(pr, (0,), (2,)) is None  # 2 + 1 layers: 4 bytes on the first
    sol = solve_hetero(pr)
    assert not sol.optimal and "overshoots" in (sol.reason or "")
    with pytest.raises(PpplanError):
        solve_placement(pr, (0,), (3,))  # more stages than the group's 2 slots
    alone = HeteroProblem(tp=1, groups=(replace(big, memory=(2.0, 4.0, 2.0)),), send_cross=((0.0,),))
    assert "decoder layer 1 alone exceeds" in (solve_hetero(alone).reason or "")

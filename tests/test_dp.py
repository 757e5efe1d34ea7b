"""The exact partitioner against brute force, plus its infeasibility reasons and input checks; the
one cut evaluator against hand sums."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppplan.core.errors import PpplanError
from ppplan.partitioner.dp import solve_partition
from ppplan.partitioner.problem import PartitionProblem, evaluate_cut, stage_bounds


def _cuts(n: int, p: int):
    """Every cut of n units into p non-empty stages, as sizes."""
    for cuts in itertools.combinations(range(1, n), p - 1):
        b = [0, *cuts, n]
        yield [b[k + 1] - b[k] for k in range(p)]


def brute_force(pr: PartitionProblem) -> tuple[float, float] | None:
    """(best bottleneck, best headroom among bottleneck-optimal cuts) by enumerating every cut."""
    kv = pr.kv_memory
    best: tuple[float, float] | None = None
    for sizes in _cuts(len(pr.time), pr.stages):
        ev = evaluate_cut(pr, sizes)
        if not ev.fits:
            continue
        heads = []
        for (a, e), m in zip(ev.bounds, ev.stage_memory, strict=True):
            if kv is not None and pr.memory_limit is not None:
                k_b = sum(kv[a : e + 1])
                heads.append((pr.memory_limit - (m - k_b)) / k_b if k_b > 0 else math.inf)
            elif pr.memory_limit is not None:
                heads.append(pr.memory_limit - m)
            else:
                heads.append(-m)
        cand = (ev.bottleneck, min(heads))
        if best is None or cand[0] < best[0] - 1e-9 * max(1.0, best[0]):
            best = cand
        elif abs(cand[0] - best[0]) <= 1e-9 * max(1.0, best[0]) and cand[1] > best[1]:
            best = (best[0], cand[1])
    return best


@st.composite
def instances(draw: st.DrawFn) -> PartitionProblem:
    n = draw(st.integers(1, 8))
    p = draw(st.integers(1, n))
    num = st.integers(0, 20).map(float)
    time = tuple(draw(st.lists(num, min_size=n, max_size=n)))
    memory = tuple(draw(st.lists(st.integers(1, 10).map(float), min_size=n, max_size=n)))
    peak = tuple(draw(st.lists(st.integers(0, 6).map(float), min_size=n, max_size=n)))
    kv = tuple(min(m, float(draw(st.integers(0, 4)))) for m in memory)
    sends = tuple(draw(st.lists(st.integers(0, 4).map(float), min_size=p - 1, max_size=p - 1)))
    limit = draw(st.one_of(st.none(), st.integers(6, 60).map(float)))
    return PartitionProblem(
        time=time,
        stages=p,
        memory=memory,
        memory_limit=limit,
        peak=peak,
        send_time=sends,
        kv_memory=kv if limit is not None else None,
    )


@settings(max_examples=400, deadline=None)
@given(instances())
def test_matches_brute_force(pr: PartitionProblem) -> None:
    res = solve_partition(pr)
    expect = brute_force(pr)
    if expect is None:
        assert res.status == "infeasible"
        assert res.reason
        return
    assert res.status == "optimal" and res.optimal
    assert res.bottleneck == pytest.approx(expect[0], rel=1e-9, abs=1e-12)
    if math.isinf(expect[1]):
        assert math.isinf(res.headroom)
    else:
        assert res.headroom == pytest.approx(expect[1], rel=1e-9, abs=1e-12)
    # the returned cut is a real partition whose numbers are what it claims
    assert sum(res.sizes) == len(pr.time) and all(s >= 1 for s in res.sizes) and len(res.sizes) == pr.stages
    for k, (a, b) in enumerate(res.bounds):
        send = pr.send_time[k] if pr.send_time and k < pr.stages - 1 else 0.0
        assert res.stage_times[k] == pytest.approx(sum(pr.time[a : b + 1]) + send)
        if pr.memory_limit is not None:
            assert res.stage_memory[k] <= pr.memory_limit * (1 + 1e-9)


@settings(max_examples=150, deadline=None)
@given(instances())
def test_without_tie_break_same_bottleneck(pr: PartitionProblem) -> None:
    full = solve_partition(pr)
    fast = solve_partition(pr, tie_break=False, explain=False)
    assert full.status == fast.status
    if full.optimal:
        assert fast.bottleneck == pytest.approx(full.bottleneck)


def test_balances_simple_chain() -> None:
    res = solve_partition(PartitionProblem(time=(1, 1, 1, 1, 1, 1, 1, 1), stages=4))
    assert res.sizes == (2, 2, 2, 2) and res.bottleneck == 2


def test_heavy_last_unit_gets_its_own_stage() -> None:
    res = solve_partition(PartitionProblem(time=(1, 1, 1, 1, 1, 3), stages=3))
    assert res.sizes == (3, 2, 1) or res.bottleneck == 3
    assert res.bottleneck == 3


def test_tie_break_prefers_kv_headroom() -> None:
    # every cut has bottleneck 3; only (2, 2) splits the two KV-heavy units' neighbours evenly:
    # (1,3) and (3,1) leave one stage with ratio (100 - 11) / 4, (2,2) gives (100 - 6) / 4 on both
    pr = PartitionProblem(time=(3, 0, 0, 3), stages=2, memory=(5, 5, 5, 5), memory_limit=100, kv_memory=(4, 0, 0, 4))
    res = solve_partition(pr)
    assert res.bottleneck == 3
    assert res.sizes == (2, 2)
    assert res.headroom == pytest.approx(94 / 4)


def test_infeasible_single_unit_reason() -> None:
    gib = 1024**3
    res = solve_partition(
        PartitionProblem(time=(1, 1, 1), stages=2, memory=(10 * gib, 91.2 * gib, 1 * gib), memory_limit=72 * gib)
    )
    assert res.status == "infeasible"
    assert res.reason == "unit 1 alone needs 91.2 GiB, limit 72.0 GiB"


def test_infeasible_stage_reason_names_stage() -> None:
    gib = 1024**3
    pr = PartitionProblem(time=(1,) * 4, stages=2, memory=(50 * gib,) * 4, memory_limit=72 * gib)
    res = solve_partition(pr)
    assert res.status == "infeasible"
    assert res.reason is not None and res.reason.startswith("stage ")
    assert "needs 100.0 GiB, limit 72.0 GiB" in res.reason


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"time": (), "stages": 1}, "time: needs at least one unit"),
        ({"time": (1.0,), "stages": 0}, "stages: must be a positive integer"),
        ({"time": (1.0,), "stages": 2}, "stages: 2 stages need at least 2 units"),
        ({"time": (1.0, -1.0), "stages": 1}, "time[1]: must be a finite number ≥ 0"),
        ({"time": (1.0, math.nan), "stages": 1}, "time[1]: must be a finite number ≥ 0"),
        ({"time": (1.0,), "stages": 1, "memory": (1.0, 2.0)}, "memory: has 2 entries, time has 1"),
        ({"time": (1.0,), "stages": 1, "memory_limit": 0.0}, "memory_limit: must be a positive number"),
        ({"time": (1.0, 1.0), "stages": 2, "send_time": ()}, "send_time: needs 1 entries"),
    ],
)
def test_rejects_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        PartitionProblem(**kwargs)


def test_stage_bounds() -> None:
    assert stage_bounds([2, 1, 3]) == [(0, 1), (2, 2), (3, 5)]


@st.composite
def hetero_instances(draw: st.DrawFn) -> PartitionProblem:
    base = draw(instances())
    p = base.stages
    speed = tuple(draw(st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0]), min_size=p, max_size=p)))
    limits = tuple(draw(st.lists(st.integers(6, 60).map(float), min_size=p, max_size=p)))
    return PartitionProblem(
        time=base.time,
        stages=p,
        memory=base.memory,
        peak=base.peak,
        send_time=base.send_time,
        stage_speed=speed,
        stage_memory_limit=limits,
    )


def brute_hetero(pr: PartitionProblem) -> float | None:
    fitting = [ev.bottleneck for ev in (evaluate_cut(pr, c) for c in _cuts(len(pr.time), pr.stages)) if ev.fits]
    return min(fitting, default=None)


@settings(max_examples=200, deadline=None)
@given(hetero_instances())
def test_heterogeneous_stages_match_brute_force(pr: PartitionProblem) -> None:
    res = solve_partition(pr)
    expect = brute_hetero(pr)
    if expect is None:
        assert res.status == "infeasible" and res.reason
    else:
        assert res.optimal and res.bottleneck == pytest.approx(expect)


@settings(max_examples=200, deadline=None)
@given(hetero_instances(), st.data())
def test_evaluate_cut_matches_hand_sums(pr: PartitionProblem, data: st.DataObject) -> None:
    """The one evaluator against the definition: units' time × speed + send; memory sum + largest peak."""
    sizes = data.draw(st.sampled_from(list(_cuts(len(pr.time), pr.stages))))
    ev = evaluate_cut(pr, sizes)
    assert pr.stage_speed is not None and pr.stage_memory_limit is not None and pr.memory and pr.peak
    for k, (a, b) in enumerate(stage_bounds(sizes)):
        send = pr.send_time[k] if pr.send_time and k < pr.stages - 1 else 0.0
        assert ev.stage_times[k] == pytest.approx(sum(pr.time[a : b + 1]) * pr.stage_speed[k] + send)
        need = sum(pr.memory[a : b + 1]) + max(pr.peak[a : b + 1])
        assert ev.stage_memory[k] == pytest.approx(need)
        assert ev.stage_fits[k] == (ev.stage_memory[k] <= pr.stage_memory_limit[k] * (1 + 1e-9))
    assert ev.bottleneck == max(ev.stage_times) and ev.fits == all(ev.stage_fits)


def test_solution_numbers_are_the_evaluators() -> None:
    pr = PartitionProblem(time=(0.1, 0.2, 0.3, 0.7, 0.11, 0.13), stages=3, send_time=(0.01, 0.02))
    res = solve_partition(pr)
    ev = evaluate_cut(pr, res.sizes)
    assert (res.bottleneck, res.stage_times, res.stage_memory) == (ev.bottleneck, ev.stage_times, ev.stage_memory)
    assert res.solver == "dp" and res.bound == res.bottleneck and res.gap == 0.0


@pytest.mark.parametrize("sizes", [(1, 2), (2, 2, 0), (1, 1, 1, 1), (0, 4, 0)])
def test_evaluate_cut_rejects_a_non_cut(sizes: tuple[int, ...]) -> None:
    with pytest.raises(PpplanError, match=r"^sizes: must be 3 stage sizes"):
        evaluate_cut(PartitionProblem(time=(1.0,) * 4, stages=3), sizes)


def test_infeasible_solution_names_the_shortfall() -> None:
    res = solve_partition(PartitionProblem(time=(1,) * 4, stages=2, memory=(3,) * 4, memory_limit=5))
    assert res.status == "infeasible" and not res.has_cut and res.shortfall is not None
    assert (res.shortfall.stage, res.shortfall.needed_bytes, res.shortfall.limit_bytes) == (0, 6, 5)
    alone = solve_partition(PartitionProblem(time=(1, 1), stages=2, memory=(5, 5), memory_limit=4))
    assert alone.shortfall is not None and alone.shortfall.stage is None and alone.shortfall.first_unit == 0

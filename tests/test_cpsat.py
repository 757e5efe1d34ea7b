"""CP-SAT and the DP agree: two independent exact solvers on the same random instances."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from ortools.sat.python import cp_model

from ppplan.partitioner import cpsat
from ppplan.partitioner.cpsat import TIME_RESOLUTION, solve_partition_cpsat
from ppplan.partitioner.dp import solve_partition
from ppplan.partitioner.problem import PartitionProblem
from tests.test_dp import hetero_instances, instances


def _agree(pr: PartitionProblem) -> None:
    dp = solve_partition(pr)
    cp = solve_partition_cpsat(pr, time_limit_s=10, hint=False)
    if not dp.optimal:
        assert cp.status == "infeasible"
        return
    assert cp.status == "optimal" and cp.solver == "cpsat"
    # exact up to the integer time resolution
    assert cp.bottleneck == pytest.approx(dp.bottleneck, rel=20 / TIME_RESOLUTION, abs=1e-12)
    assert cp.gap <= 20 / TIME_RESOLUTION + 1e-12


@settings(max_examples=60, deadline=None)
@given(instances())
def test_cpsat_matches_dp(pr: PartitionProblem) -> None:
    _agree(pr)


@settings(max_examples=40, deadline=None)
@given(hetero_instances())
def test_cpsat_matches_dp_heterogeneous(pr: PartitionProblem) -> None:
    _agree(pr)


def test_cpsat_with_hint_on_a_real_sized_instance() -> None:
    pr = _sixty_units()
    cp = solve_partition_cpsat(pr, time_limit_s=20, workers=2)
    dp = solve_partition(pr)
    assert cp.status in ("optimal", "feasible")
    assert cp.bottleneck == pytest.approx(dp.bottleneck, rel=1e-5)
    assert sum(cp.sizes) == 60


def _sixty_units() -> PartitionProblem:
    times = tuple(1.0 + (i % 7) * 0.1 for i in range(60))
    return PartitionProblem(time=times, stages=8, memory=(1.0,) * 60, memory_limit=10.0, send_time=(0.05,) * 7)


def test_no_cut_within_the_limit_is_a_timeout() -> None:
    cp = solve_partition_cpsat(_sixty_units(), time_limit_s=1e-9, hint=False)
    assert cp.status == "timeout" and not cp.has_cut and cp.reason == "no solution within 1e-09 s"


def test_an_invalid_model_is_a_bug_not_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(pr: PartitionProblem) -> tuple[cp_model.CpModel, list, float]:
        m = cp_model.CpModel()
        return m, [m.new_int_var(5, 1, "empty_domain")], 1.0

    monkeypatch.setattr(cpsat, "_build_model", broken)
    with pytest.raises(RuntimeError, match="invalid"):
        solve_partition_cpsat(_sixty_units(), hint=False)

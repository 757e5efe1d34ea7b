"""The aiconfigurator kernel database as a profile source, its missing-extra error and the calibration guard."""

from __future__ import annotations

import builtins
from typing import Any

import pytest

from ppplan.core.errors import PpplanError
from ppplan.executor.calibration import check_measured_device
from ppplan.executor.spec import ExecutorError
from ppplan.partitioner.request import PlanRequest
from ppplan.profiler import kerneldb, kerneldb_fit
from ppplan.profiler.resolve import plan_request, resolve_inputs

try:
    import aiconfigurator_core  # noqa: F401

    HAVE_EXTRA = True
except ImportError:
    HAVE_EXTRA = False


def test_missing_extra_is_a_one_line_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = builtins.__import__

    def no_extra(name: str, *args: Any, **kw: Any) -> Any:
        if name.startswith("aiconfigurator_core"):
            raise ImportError(name)
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_extra)
    req = PlanRequest(model="tiny-llama", gpus="2xH100", kernel_db="aiconfigurator", engine="vllm")
    with pytest.raises(PpplanError) as exc:
        resolve_inputs(req)
    assert exc.value.field == "kernel_db"
    assert "pip install 'ppplan[kerneldb]'" in str(exc.value) and "\n" not in str(exc.value)


def test_the_calibration_guard_refuses_another_device_kind() -> None:
    with pytest.raises(ExecutorError, match="measured on CPU, not on the plan's H100-SXM-80GB"):
        check_measured_device("H100", "cpu")
    with pytest.raises(ExecutorError, match="not on the plan's CPU"):
        check_measured_device("CPU", "cuda:0")
    check_measured_device("CPU", "cpu")  # the same kind: accepted
    check_measured_device("H100", "cuda:0")  # a GPU of unknown name: accepted
    check_measured_device("H100", None)  # rows stored without a device: not checked


@pytest.mark.skipif(not HAVE_EXTRA, reason="needs the kerneldb extra (CI installs it)")
def test_kernel_db_plan_names_its_source_and_tables() -> None:
    req = PlanRequest(model="llama-3.1-8b", gpus="2xH100", kernel_db="aiconfigurator", engine="vllm")
    plan = plan_request(req)
    prov = plan.provenance
    assert "fitted at plan time" in prov.time_source and "vllm" in prov.time_source
    assert "aiconfigurator-core" in str(prov.efficiency["source"]) and "h100_sxm/vllm" in str(prov.efficiency["source"])
    assert plan.metrics.tpot_ms > 0


@pytest.mark.skipif(not HAVE_EXTRA, reason="needs the kerneldb extra (CI installs it)")
def test_composed_70b_tp8_layer_matches_the_shape_aware_model() -> None:
    """The issue's done-when figure: ppplan's TP8 Llama-3.1-70B layer at 32 sequences within 10 % of the tables."""
    from ppplan.core.costmodel import CostModel
    from ppplan.core.gpus import get_gpu
    from ppplan.core.layer_kernels import ELEMENTWISE_KERNELS
    from ppplan.profiler.analytic import analytic_profile, model_spec

    t = kerneldb.load_tables("H100", "vllm")
    shape = kerneldb_fit.LayerShape(hidden=8192, heads=64, kv_heads=8, head_dim=128, inter=28672)
    table = kerneldb_fit.compose_decode_layer(t, shape, 8, 32, 4500)["total"]
    cm = CostModel(analytic_profile(model_spec("llama-3.1-70b")), get_gpu("H100"), engine="vllm")
    assert cm.kernels is not None
    g = cm.kernels.gemm["bf16"]
    ew = ELEMENTWISE_KERNELS * (g.floor_s + 3 * 32 * 8192 * 2 / (3.35e12 * g.eta_m))
    ours = float(cm.unit_times(8, "decode", 32, 4500)[1]) - ew
    assert ours == pytest.approx(table, rel=0.10)


@pytest.mark.skipif(not HAVE_EXTRA, reason="needs the kerneldb extra (CI installs it)")
def test_unknown_gpu_kind_for_the_tables_is_a_user_error() -> None:
    with pytest.raises(PpplanError, match="no kernel tables"):
        kerneldb.load_tables("L4", "vllm")

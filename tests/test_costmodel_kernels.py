"""The shape-aware kernel model: GEMM quantisation, GQA attention, collectives and CUDA graphs vs eager."""

from __future__ import annotations

from typing import Any

import pytest

from ppplan.core.collectives import collectives_for
from ppplan.core.costmodel import COST_MODEL_VERSION, CostModel
from ppplan.core.gpus import get_gpu
from ppplan.core.kernels import decode_attention_time, gemm_time, kernel_fit_for
from ppplan.profiler.analytic import analytic_profile, model_spec

H100 = get_gpu("H100")


def _fit():  # type: ignore[no-untyped-def]
    fit = kernel_fit_for(H100.name, "vllm")
    assert fit is not None
    return fit


def test_committed_data_covers_the_datasheet_gpus_and_names_its_source() -> None:
    assert COST_MODEL_VERSION == "roofline-3"
    fit = _fit()
    assert "aiconfigurator-core" in fit.source and fit.engine == "vllm"
    assert kernel_fit_for("CPU", "vllm") is None  # the CPU keeps the calibratable roofline
    assert H100.sms == 132


def test_gemm_efficiency_depends_on_shape() -> None:
    g = _fit().gemm["bf16"]
    kw: dict[str, Any] = {"peak": H100.peak_flops("bf16"), "bw": H100.hbm_bw, "sms": 132, "in_bytes": 2.0}
    # a small decode shard reaches a lower share of HBM bandwidth than a large one
    small, large = gemm_time(32, 1024, 8192, g, **kw), gemm_time(32, 16384, 8192, g, **kw)
    bw_small = 1024 * 8192 * 2 / small / H100.hbm_bw
    bw_large = 16384 * 8192 * 2 / large / H100.hbm_bw
    assert bw_small < bw_large < 1.0
    # wave quantisation: one tile row more than a full wave costs a second wave
    one = gemm_time(g.tile_m * 4, 33 * g.tile_n, 16384, g, **kw)  # 132 tiles: one wave
    over = gemm_time(g.tile_m * 4, 34 * g.tile_n, 16384, g, **kw)  # 136 tiles: a second wave
    assert over > one * 1.3


def test_one_kv_head_per_gpu_reads_the_cache_slower_per_byte() -> None:
    att = _fit().attention
    kw: dict[str, Any] = {"peak": H100.peak_flops("bf16"), "bw": H100.hbm_bw}
    nbytes, flops = 1e8, 1e9
    assert decode_attention_time(1, nbytes, flops, 1, att, **kw) > decode_attention_time(1, nbytes, flops, 8, att, **kw)


def test_collectives_are_measured_curves_with_the_custom_allreduce_for_small_messages() -> None:
    coll = collectives_for(H100.name, "vllm")
    assert coll is not None
    small = 32 * 8192 * 2
    graph = coll.allreduce_time(8, small, cuda_graphs=True)
    assert graph < coll.op_time("all_reduce", 8, small)  # the custom all-reduce wins at 512 KiB
    assert graph < coll.allreduce_time(8, small, cuda_graphs=False)
    assert coll.op_time("all_reduce", 8, 2**30) > coll.op_time("all_reduce", 8, 2**29)  # beyond the table


def test_eager_decode_costs_more_and_eager_profiles_yield_to_the_kernel_model() -> None:
    prof = analytic_profile(model_spec("llama-3.1-8b"))
    graphs = CostModel(prof, H100).unit_times(1, "decode", 1, 1000)
    eager = CostModel(prof, H100, cuda_graphs=False).unit_times(1, "decode", 1, 1000)
    assert eager[1] > graphs[1]
    assert "CUDA graphs" in str(CostModel(prof, H100).describe()["time_source"])


def test_prefill_beats_the_roofline_share_only_where_shapes_allow() -> None:
    prof = analytic_profile(model_spec("llama-3.1-70b"))
    cm = CostModel(prof, H100)
    t8 = float(cm.unit_times(8, "decode", 32, 4500)[1])
    t1 = float(cm.unit_times(1, "decode", 32, 4500)[1])
    # TP8 does not scale perfectly: small shards, one KV head per GPU and two all-reduces
    assert t1 / t8 < 8 * 0.8
    assert t8 == pytest.approx(160e-6, rel=0.15)


@pytest.mark.parametrize("model", ["gemma-3-27b", "llama-3.1-8b", "qwen2.5-72b"])
def test_every_unit_is_within_sight_of_its_roofline(model: str) -> None:
    """A tied LM head counts the matrix's bytes but only the norm's parameters: its bytes per element
    must not come from that ratio (gemma-3's head once took 32 s per decode step)."""
    from ppplan.core.costmodel import CostModel
    from ppplan.core.gpus import get_gpu
    from ppplan.partitioner.request import PlanRequest
    from ppplan.profiler.resolve import resolve_inputs

    prof, _ = resolve_inputs(PlanRequest(model=model, gpus="1xH100"))
    gpu = get_gpu("H100")
    kernel = CostModel(prof, gpu).unit_times(1, "decode", 8, 2048)
    roofline = CostModel(prof, gpu, roofline=True).unit_times(1, "decode", 8, 2048)
    assert (kernel < 10 * roofline + 1e-3).all(), (kernel / roofline).max()

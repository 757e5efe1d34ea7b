"""Analytic profile: weight bytes per dtype, KV bytes per token, FLOPs, and the cost model's rules."""

from __future__ import annotations

import pytest

from ppplan.core.costmodel import CostModel, causal_pairs
from ppplan.core.dtypes import linear_weight_bytes
from ppplan.core.gpus import UnknownGPUError, get_gpu, list_gpus
from ppplan.core.profile import Profile
from ppplan.profiler.analytic import analytic_profile, model_spec
from ppplan.profiler.profile_file import load_profile


def test_linear_weight_bytes_include_scales() -> None:
    assert linear_weight_bytes((4096, 4096), "bf16") == 2 * 4096 * 4096
    assert linear_weight_bytes((4096, 4096), "fp8") == 4096 * 4096 + 32 * 32 * 4
    assert linear_weight_bytes((4096, 4096), "int8") == 4096 * 4096 + 4096 * 4
    assert linear_weight_bytes((4096, 4096), "int4") == 4096 * 4096 // 2 + 4096 * 32 * 2
    assert linear_weight_bytes((8, 256, 64), "int4") == 8 * 256 * 64 // 2 + 8 * 256 * 1 * 2
    with pytest.raises(ValueError, match="unknown weight dtype 'int3'"):
        linear_weight_bytes((2, 2), "int3")


def test_llama_units_bytes_and_kv() -> None:
    spec = model_spec("llama-3.1-8b")
    prof = analytic_profile(spec, "bf16", "bf16")
    layer = prof.units[1]
    assert layer.weight_bytes == 2 * spec.units[1].params
    assert layer.kv_bytes_per_token == 2 * 8 * 128 * 2  # K and V, 8 KV heads × 128 dims, bf16
    assert layer.linear_flops_per_token == 2 * (spec.units[1].params - 2 * 4096)  # norms are not matmuls
    assert prof.units[0].weight_bytes == 128256 * 4096 * 2
    assert prof.units[-1].linear_flops_per_token == 2 * 128256 * 4096
    fp8kv = analytic_profile(spec, "bf16", "fp8")
    assert fp8kv.units[1].kv_bytes_per_token == layer.kv_bytes_per_token // 2


def test_quantised_weights_keep_embedding_and_head_in_bf16() -> None:
    spec = model_spec("llama-3.1-70b")
    bf16 = analytic_profile(spec, "bf16")
    int4 = analytic_profile(spec, "int4")
    assert int4.units[0].weight_bytes == bf16.units[0].weight_bytes
    assert int4.units[-1].weight_bytes == bf16.units[-1].weight_bytes
    ratio = int4.units[1].weight_bytes / bf16.units[1].weight_bytes
    assert 0.25 < ratio < 0.27  # 4 bits + one bf16 scale per 128 inputs
    assert "int4" in int4.quantization


def test_mla_kv_is_latent_and_replicated() -> None:
    prof = analytic_profile(model_spec("deepseek-v3"), "fp8", "bf16")
    u = prof.units[1]
    assert u.kv_bytes_per_token == (512 + 64) * 2
    assert not u.kv_tp_shardable
    cm = CostModel(prof, get_gpu("H100"))
    kv1 = cm.kv_bytes_per_gpu(1, 10, 1000)[1]
    assert cm.kv_bytes_per_gpu(8, 10, 1000)[1] == kv1  # not split by TP


def test_gqa_kv_split_by_tp_up_to_kv_heads() -> None:
    cm = CostModel(analytic_profile(model_spec("llama-3.1-70b")), get_gpu("H100"))
    kv = [cm.kv_bytes_per_gpu(t, 1, 1000)[1] for t in (1, 2, 8)]
    assert kv[0] == 2 * kv[1] == 8 * kv[2]


def test_sliding_window_caps_kv() -> None:
    prof = analytic_profile(model_spec("gpt-oss-120b"))
    cm = CostModel(prof, get_gpu("H100"))
    kv = cm.kv_bytes_per_gpu(1, 1, 100_000)
    sliding, full = prof.units[1], prof.units[2]
    assert sliding.window == 128 and full.window is None
    assert kv[1] == sliding.kv_bytes_per_token * 128
    assert kv[2] == full.kv_bytes_per_token * 100_000


def test_moe_compute_counts_active_memory_counts_all() -> None:
    spec = model_spec("mixtral-8x7b")
    prof = analytic_profile(spec)
    u = prof.units[1]
    assert u.num_experts == 8 and u.experts_per_token == 2
    assert u.weight_bytes == pytest.approx(2 * spec.units[1].params)
    assert u.linear_flops_per_token < 0.35 * 2 * spec.units[1].params  # 2 of 8 experts + attention


def test_decode_time_grows_with_batch_and_context_and_prefill_with_prompt() -> None:
    cm = CostModel(analytic_profile(model_spec("llama-3.1-8b")), get_gpu("H100"))
    t = lambda b, c: float(cm.unit_times(1, "decode", b, c)[1])  # noqa: E731
    assert t(1, 1000) <= t(64, 1000) < t(512, 1000)
    assert t(64, 1000) < t(64, 32000)
    p = lambda n: float(cm.unit_times(1, "prefill", n, n)[1])  # noqa: E731
    assert p(128) < p(1024) < p(8192)
    # decode at batch 1 is memory bound: about the layer's weight bytes over HBM bandwidth
    layer_bytes = cm.weight[1]
    assert layer_bytes / 3.35e12 < t(1, 10) < 1.5 * layer_bytes / (3.35e12 * 0.8)
    # the roofline (what a calibration fits) is the weight bytes at 80 % of HBM bandwidth + 10 µs
    roof = CostModel(analytic_profile(model_spec("llama-3.1-8b")), get_gpu("H100"), roofline=True)
    assert float(roof.unit_times(1, "decode", 1, 10)[1]) == pytest.approx(
        layer_bytes / (3.35e12 * 0.8) + 10e-6, rel=0.02
    )


def test_causal_pairs() -> None:
    assert causal_pairs(4, float("inf")) == 10
    assert causal_pairs(4, 2) == 3 + 2 * 2


def test_profile_round_trip(tmp_path) -> None:
    prof = analytic_profile(model_spec("tiny-moe"))
    path = tmp_path / "p.json"
    path.write_text(prof.to_json())
    back = load_profile(path)
    assert isinstance(back, Profile) and back.profile_id == prof.profile_id


def test_gpu_catalog() -> None:
    names = {g.name for g in list_gpus()}
    assert {"H100-SXM-80GB", "H200-141GB", "A100-80GB", "A100-40GB", "L40S", "L4", "B200"} <= names
    assert get_gpu("h100").name == "H100-SXM-80GB"
    assert all(g.source for g in list_gpus())
    with pytest.raises(UnknownGPUError, match="unknown GPU kind 'V100'"):
        get_gpu("V100")

"""Expert parallelism: per-GPU bytes equal a direct count over the meta-device model; the all-to-all."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest

from ppplan.core.costmodel import CostModel
from ppplan.core.dtypes import linear_weight_bytes
from ppplan.core.errors import PpplanError
from ppplan.core.gpus import get_gpu
from ppplan.core.profile import Profile
from ppplan.partitioner.expert import (
    FP8_DISPATCH_BYTES,
    INTER_EFFICIENCY,
    INTER_LATENCY_S,
    EPLinks,
    ExpertDegrees,
    ExpertModel,
    expert_layouts,
    valid_ep_degrees,
)

torch = pytest.importorskip("torch")

from ppplan.profiler.analytic import analytic_profile  # noqa: E402
from ppplan.profiler.configs import ModelConfig, config_hash, load_model_config  # noqa: E402
from ppplan.profiler.models import build_hf_config, build_meta_model, decoder_layers, describe_model  # noqa: E402

# a DeepSeek-V3-shaped model small enough for the meta device in a test: MLA, 1 dense layer, shared
# expert, 32 routed experts with group-limited top-8 routing
_DEEPSEEK_SMALL = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "moe_intermediate_size": 64,
    "num_hidden_layers": 3,
    "first_k_dense_replace": 1,
    "n_routed_experts": 32,
    "num_experts_per_tok": 8,
    "n_group": 4,
    "topk_group": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "kv_lora_rank": 64,
    "q_lora_rank": 96,
    "vocab_size": 1024,
}


def _config(name: str) -> ModelConfig:
    if name != "deepseek-small":
        return load_model_config(name)
    raw = {**load_model_config("deepseek-v3").raw, **_DEEPSEEK_SMALL}
    return ModelConfig(name=name, raw=raw, config_hash=config_hash(raw), source="test:deepseek-small")


@cache
def _model(name: str) -> tuple[list[list[tuple[str, tuple[int, ...]]]], int]:
    """(named parameter shapes of each decoder layer, routed experts) of the meta-device model."""
    cfg = _config(name)
    hf = build_hf_config(cfg)
    model = build_meta_model(hf)
    _, layers = decoder_layers(model, int(hf.num_hidden_layers))
    shapes = [[(n, tuple(int(s) for s in p.shape)) for n, p in layer.named_parameters()] for layer in layers]
    experts = int(getattr(hf, "n_routed_experts", None) or getattr(hf, "num_local_experts", None) or 0)
    return shapes, experts


@cache
def _profile(name: str, dtype: str) -> Profile:
    return analytic_profile(describe_model(_config(name)), dtype)


def _param_bytes(name: str, shape: tuple[int, ...], experts: int, dtype: str) -> int:
    """Bytes of one parameter as checkpoints store it: matrices in ``dtype`` (with their scales),
    vectors and the router in 16 bits."""
    parts = name.split(".")
    router = "experts" not in parts and parts[-2] in ("gate", "router") and shape[0] == experts
    if len(shape) >= 2 and not router:
        return linear_weight_bytes(shape, dtype)
    return 2 * math.prod(shape)


def _direct_count(name: str, layer: int, ep: int, rank: int, dtype: str) -> tuple[int, int]:
    """(non-expert, routed-expert) bytes of decoder ``layer`` that EP rank ``rank`` holds: every
    non-expert parameter whole, and the routed experts rank·E/ep … (rank+1)·E/ep − 1 (fused
    ``experts.<param>`` tensors sliced along the expert axis; ``experts.<N>.*`` counted by N)."""
    shapes, experts = _model(name)
    lo, hi = rank * experts // ep, (rank + 1) * experts // ep
    dense = routed = 0
    for pname, shape in shapes[layer]:
        parts = pname.split(".")
        if "experts" not in parts:
            dense += _param_bytes(pname, shape, experts, dtype)
            continue
        after = parts[parts.index("experts") + 1]
        if after.isdigit():  # one module per expert
            routed += _param_bytes(pname, shape, experts, dtype) if lo <= int(after) < hi else 0
        else:  # fused: the leading axis is the expert
            assert shape[0] == experts, pname
            routed += _param_bytes(pname, (hi - lo, *shape[1:]), experts, dtype)
    return dense, routed


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
@pytest.mark.parametrize("name", ["tiny-moe", "tiny-mla", "deepseek-small"])
def test_ep_memory_equals_a_direct_count(name: str, dtype: str) -> None:
    shapes, experts = _model(name)
    em = ExpertModel(_profile(name, dtype))
    assert em.num_experts == experts
    for ep in valid_ep_degrees(experts, experts):
        deg = ExpertDegrees(tp=1, attention_dp=ep, ep=ep)
        per_gpu = em.weight_bytes_per_gpu(deg)
        for layer in range(len(shapes)):
            # attention TP 1: a GPU holds every non-expert weight and its EP rank's experts
            ranks = {sum(_direct_count(name, layer, ep, r, dtype)) for r in range(ep)}
            assert len(ranks) == 1  # linear placement: every rank holds as many bytes
            assert per_gpu[layer + 1] == ranks.pop(), (name, dtype, ep, layer)


@pytest.mark.parametrize("name", ["tiny-mla", "deepseek-small"])
def test_moe_tp_splits_each_rank_experts(name: str) -> None:
    """With fewer EP ranks than GPUs each rank's experts are TP-split over the rest (SGLang moe_tp)."""
    shapes, _ = _model(name)
    em = ExpertModel(_profile(name, "bf16"))
    deg = ExpertDegrees(tp=2, attention_dp=2, ep=2)
    routed = em.routed_bytes_per_gpu(deg)
    for layer in range(len(shapes)):
        for rank in range(deg.ep):
            assert routed[layer + 1] * deg.moe_tp == _direct_count(name, layer, deg.ep, rank, "bf16")[1]


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_ep1_is_todays_tp_layout(tp: int) -> None:
    prof = _profile("tiny-mla", "fp8")
    em, cm = ExpertModel(prof), CostModel(prof, get_gpu("H100"))
    deg = ExpertDegrees(tp=tp)
    np.testing.assert_allclose(em.weight_bytes_per_gpu(deg), cm.weight_bytes_per_gpu(tp), rtol=1e-12)
    np.testing.assert_allclose(em.kv_bytes_per_gpu(deg, 24, 512), cm.kv_bytes_per_gpu(tp, 24, 512), rtol=1e-12)


def test_dp_attention_splits_mla_kv_by_sequences() -> None:
    """MLA's latent cache is whole on every TP rank; DP attention gives each rank its own sequences."""
    em = ExpertModel(_profile("tiny-mla", "bf16"))
    tp8 = em.kv_bytes_per_gpu(ExpertDegrees(tp=8), 64, 1000)
    dp8 = em.kv_bytes_per_gpu(ExpertDegrees(tp=1, attention_dp=8, ep=8), 64, 1000)
    np.testing.assert_allclose(dp8 * 8, tp8)
    assert tp8[1] == em.kv_bpt[1] * 1000 * 64  # replicated: not divided by TP
    odd = em.kv_bytes_per_gpu(ExpertDegrees(tp=1, attention_dp=8, ep=8), 65, 1000)
    np.testing.assert_allclose(odd, dp8 * 9 / 8)  # the fullest rank holds ⌈65 / 8⌉ = 9 sequences


def test_alltoall() -> None:
    em = ExpertModel(_profile("deepseek-small", "fp8"), imbalance=1.25)
    gpu = get_gpu("H100")
    one_node, two_nodes = EPLinks.of(gpu), EPLinks.of(gpu, gpus_per_node=4)
    assert not em.alltoall_time(ExpertDegrees(tp=8), 64, one_node).any()  # ep = 1: the TP all-reduce
    deg = ExpertDegrees(tp=1, attention_dp=8, ep=8)
    t = em.alltoall_time(deg, 64, one_node)
    assert t[0] == t[1] == t[-1] == 0.0  # embedding, the dense layer, the head
    assert (t[2:-1] > 0).all()
    # across two nodes: half the copies cross the network (4 of 8 ranks per node)
    copies = 64 * 8 * 1.25
    hidden = em.hidden
    want = sum(
        INTER_LATENCY_S + copies * hidden * b * 4 / 8 / (gpu.network_bw * INTER_EFFICIENCY)
        for b in (FP8_DISPATCH_BYTES, 2.0)
    )
    assert em.alltoall_time(deg, 64, two_nodes)[2] == pytest.approx(want, rel=1e-12)
    assert em.alltoall_time(deg, 64, two_nodes)[2] > t[2]
    small, big = em.alltoall_time(deg, 8, one_node)[2], em.alltoall_time(deg, 512, one_node)[2]
    assert small < t[2] < big  # size-dependent
    # a measured curve replaces the formula inside a node
    seen: list[tuple[int, float]] = []

    def curve(gpus: int, nbytes: np.ndarray) -> np.ndarray:
        seen.append((gpus, float(nbytes.max())))
        return np.full_like(nbytes, 1e-3)

    measured = EPLinks(gpus_per_node=8, nvlink_bw=gpu.nvlink_bw, network_bw=gpu.network_bw, intra_curve=curve)
    assert em.alltoall_time(deg, 64, measured)[2] == pytest.approx(2e-3)
    assert seen[0] == (8, pytest.approx(copies * hidden * FP8_DISPATCH_BYTES))


def test_load_and_reads() -> None:
    em = ExpertModel(_profile("deepseek-small", "bf16"))
    spread, split = ExpertDegrees(tp=1, attention_dp=8, ep=8), ExpertDegrees(tp=8)
    assert em.load_factor(spread) == 1.5 and em.load_factor(split) == 1.0
    assert em.routed_token_share(spread) == pytest.approx(1.5 / 8)
    # one token per rank touches 8 of 32 experts per rank on average; 8 ranks touch nearly all
    r1 = em.routed_read_bytes_per_gpu(spread, 1)[2] / em.routed_bytes_per_gpu(spread)[2]
    assert r1 == pytest.approx(1 - (1 - 8 / 32) ** 8)


def test_degrees_and_errors() -> None:
    assert valid_ep_degrees(256, 16) == [1, 2, 4, 8, 16]
    assert valid_ep_degrees(384, 8) == [1, 2, 4, 8]
    assert valid_ep_degrees(8, 12) == [1, 2, 4]
    assert valid_ep_degrees(0, 8) == [1]
    assert valid_ep_degrees(256, 16, redundant_experts=32) == [1, 2, 4, 8, 16]
    assert valid_ep_degrees(10, 4, redundant_experts=2) == [1, 2, 4]
    lays = {(d.tp, d.attention_dp, d.ep) for d in expert_layouts(8, 4, [1, 2, 4])}
    assert lays == {(1, 4, 2), (1, 4, 4), (2, 2, 2), (2, 2, 4), (4, 1, 1), (4, 1, 2), (4, 1, 4)}
    with pytest.raises(PpplanError) as err:
        ExpertDegrees(tp=2, attention_dp=2, ep=3)
    assert err.value.field == "ep"
    with pytest.raises(PpplanError) as err:
        ExpertDegrees(tp=0)
    assert err.value.field == "tp"
    em = ExpertModel(_profile("tiny-moe", "bf16"))  # 4 experts
    with pytest.raises(PpplanError) as err:
        em.weight_bytes_per_gpu(ExpertDegrees(tp=1, attention_dp=8, ep=8))
    assert err.value.field == "ep" and "4 expert slots" in str(err.value)
    with pytest.raises(PpplanError) as err:
        ExpertModel(_profile("tiny-moe", "bf16"), imbalance=0.5)
    assert err.value.field == "imbalance"
    # redundant experts: one more slot per rank (EPLB), e.g. 8 + 8 over EP 8
    red = ExpertModel(_profile("tiny-mla", "bf16"), redundant_experts=8)
    plain = ExpertModel(_profile("tiny-mla", "bf16"))
    deg = ExpertDegrees(tp=1, attention_dp=8, ep=8)
    np.testing.assert_allclose(red.routed_bytes_per_gpu(deg), 2 * plain.routed_bytes_per_gpu(deg))

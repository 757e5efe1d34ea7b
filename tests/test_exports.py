"""Engine exports: the settings that make a plan real (batch, token budget, context, memory share,
quantisation, replicas, nodes, expert parallelism, mixed clusters), on hand-built plans and on plans
from the planner. Flags are checked against the engines' parsers in test_engine_parsers.py."""

from __future__ import annotations

import functools
import shlex
from typing import Any

import pytest

from ppplan.partitioner.exports import export_plan, render_export
from ppplan.partitioner.exports_layout import HEAD_ADDR, read_deployment
from ppplan.partitioner.request import PlanRequest
from ppplan.profiler.resolve import plan_request

MODEL = "meta-llama/Llama-3.1-70B"


def make_plan(
    *,
    tp: int = 1,
    pp: int = 2,
    replicas: int = 1,
    ep: int | None = None,
    attention_dp: int | None = None,
    micro_batches: int = 2,
    micro_batch_size: int = 8,
    layers: int = 32,
    partition: list[int] | None = None,
    nodes: int = 1,
    gpus_per_node: int = 8,
    groups: list[dict[str, Any]] | None = None,
    stage_devices: list[list[int]] | None = None,
    weight_dtype: str = "bf16",
    kv_dtype: str = "bf16",
    token_budget: int | None = 4096,
    context: int = 2560,
) -> dict[str, Any]:
    """A plan dict with the fields the exports read (``ep``/``token_budget`` None: an older plan)."""
    part = partition or [layers // pp + (1 if k < layers % pp else 0) for k in range(pp)]
    devices = stage_devices or [list(range(k * tp, (k + 1) * tp)) for k in range(pp)]
    table: list[tuple[int, str]] = []  # global GPU -> (node, gpu)
    for g in groups or [{"gpu": "H100-SXM-80GB", "nodes": nodes, "gpus_per_node": gpus_per_node}]:
        for _ in range(g["nodes"]):
            table += [(len({t[0] for t in table}), g["gpu"])] * g["gpus_per_node"]
    degrees: dict[str, Any] = {
        "tp": tp // (attention_dp or 1),  # ``tp`` here: GPUs per stage; the plan's degrees.tp: attention TP
        "pp": pp,
        "replicas": replicas,
        "micro_batches": micro_batches,
        "micro_batch_size": micro_batch_size,
        "gpus_used": tp * pp * replicas,
    }
    if ep is not None:
        degrees |= {"ep": ep, "attention_dp": attention_dp or 1}
    first = 0
    stages = []
    for k, n in enumerate(part):
        stages.append(
            {
                "index": k,
                "modules": [f"model.layers.{i}" for i in range(first, first + n)],
                "devices": devices[k],
                "node": table[devices[k][0]][0],
                "gpu": table[devices[k][0]][1],
                "memory": {
                    "weights_gib": 30.0,
                    "kv_cache_gib": 30.0,
                    "workspace_gib": 2.0,
                    "reserve_gib": 2.0,
                    "total_gib": 64.0,
                    "limit_gib": 72.0,
                },
            }
        )
        first += n
    cluster: dict[str, Any] = {
        "gpu": "H100-SXM-80GB",
        "count": len(table),
        "nodes": len({t[0] for t in table}),
        "gpus_per_node": gpus_per_node,
    }
    if groups:
        cluster["groups"] = groups
    workload: dict[str, Any] = {"prompt_tokens": 2048, "output_tokens": 512, "context": context}
    if token_budget is not None:
        workload["token_budget"] = token_budget
    return {
        "degrees": degrees,
        "partition": part,
        "stages": stages,
        "cluster": cluster,
        "workload": workload,
        "request": {"gpu_memory_utilization": 0.9, "prefill_chunk_tokens": 8192},
        "weight_dtype": weight_dtype,
        "kv_dtype": kv_dtype,
        "model_source": "preset:llama-3.1-70b",
    }


def flag(args: list[str], name: str) -> str | None:
    """The value after ``name`` in ``args`` (None when absent; "" for a switch)."""
    if name not in args:
        return None
    i = args.index(name)
    return args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else ""


H100_A100 = [
    {"gpu": "H100-SXM-80GB", "nodes": 1, "gpus_per_node": 8, "count": 8},
    {"gpu": "A100-SXM-80GB", "nodes": 1, "gpus_per_node": 8, "count": 8},
]

# hand-built plans every export test (and test_engine_parsers) runs over
PLANS: dict[str, dict[str, Any]] = {
    "single": make_plan(tp=2, pp=4),
    "replicas-one-node": make_plan(tp=1, pp=2, replicas=4),
    "replicas-two-nodes": make_plan(tp=8, pp=1, replicas=2, nodes=2),
    "pp-two-nodes": make_plan(tp=4, pp=4, nodes=2, micro_batches=4),
    "dp4-two-nodes": make_plan(tp=4, pp=1, replicas=4, nodes=2, micro_batches=1, micro_batch_size=64),
    "pp-four-nodes-replicas": make_plan(tp=8, pp=2, replicas=2, nodes=4),
    "ep-one-node": make_plan(tp=8, pp=1, ep=8, attention_dp=8, layers=61, micro_batches=1, micro_batch_size=256),
    "ep-tp-attention": make_plan(tp=8, pp=1, ep=8, attention_dp=1, layers=61, micro_batches=1),
    "ep-replicas-one-node": make_plan(tp=4, pp=1, ep=4, attention_dp=4, replicas=2, layers=61, micro_batches=1),
    "ep-pp-two-nodes": make_plan(tp=8, pp=2, ep=8, attention_dp=8, nodes=2, layers=61, micro_batches=2),
    "mixed": make_plan(tp=4, pp=4, groups=H100_A100, partition=[24, 24, 16, 16], layers=80),
    "mixed-a100-first": make_plan(
        tp=4,
        pp=4,
        groups=H100_A100,
        partition=[16, 16, 24, 24],
        layers=80,
        stage_devices=[[8, 9, 10, 11], [12, 13, 14, 15], [0, 1, 2, 3], [4, 5, 6, 7]],
    ),
    "mixed-uneven": make_plan(
        tp=2,
        pp=4,
        groups=H100_A100,
        partition=[22, 22, 22, 14],
        layers=80,
        stage_devices=[[0, 1], [2, 3], [4, 5], [12, 13]],
    ),
    "mixed-uneven-ep": make_plan(
        tp=2,
        pp=4,
        ep=2,
        attention_dp=2,
        groups=H100_A100,
        partition=[16, 16, 16, 13],
        layers=61,
        stage_devices=[[0, 1], [2, 3], [4, 5], [8, 9]],
    ),
    "fp8": make_plan(tp=1, pp=2, weight_dtype="fp8", kv_dtype="fp8"),
    "int4": make_plan(tp=2, pp=2, weight_dtype="int4"),
    "int8": make_plan(tp=2, pp=2, weight_dtype="int8", kv_dtype="fp8"),
    "fp16": make_plan(tp=1, pp=2, weight_dtype="fp16"),
    "old-plan": make_plan(tp=1, pp=2, token_budget=None),
}


@functools.cache
def real_plan(name: str) -> dict[str, Any]:
    """A plan from the planner itself (cached: several tests read it)."""
    requests = {
        "tiny-pp2": PlanRequest(model="tiny-llama", gpus="2xH100", tp=1, pp=2),
        "70b-16-nodes2": PlanRequest(model="llama-3.1-70b", gpus="16xH100", nodes=2),
        "70b-tp4pp4": PlanRequest(model="llama-3.1-70b", gpus="16xH100", nodes=2, tp=4, pp=4),
        "8b-fp8": PlanRequest(model="llama-3.1-8b", gpus="8xH100", weight_dtype="fp8", kv_dtype="fp8"),
    }
    return plan_request(requests[name]).model_dump(mode="json")


REAL = ["tiny-pp2", "70b-16-nodes2", "70b-tp4pp4", "8b-fp8"]


def test_single_node_settings() -> None:
    """The batch, token budget, context and memory share of the plan, once, in every engine."""
    ex = export_plan(PLANS["single"], MODEL)
    v, s, t = ex["vllm"], ex["sglang"], ex["trtllm"]["llm_args"]
    assert flag(v["args"], "--max-num-seqs") == "16" and flag(s["args"], "--max-running-requests") == "16"
    assert flag(v["args"], "--max-num-batched-tokens") == "4096" == flag(s["args"], "--chunked-prefill-size")
    assert flag(v["args"], "--max-model-len") == "2560" == flag(s["args"], "--context-length")
    assert flag(v["args"], "--gpu-memory-utilization") == "0.9" == flag(s["args"], "--mem-fraction-static")
    assert flag(s["args"], "--pp-max-micro-batch-size") == "8"
    assert any("workload" in n for n in v["notes"]) and any("workload" in n for n in s["notes"])
    assert (t["max_batch_size"], t["max_num_tokens"], t["max_seq_len"], t["pp_partition"]) == (16, 4096, 2560, [8] * 4)
    assert 0 < t["kv_cache_config"]["free_gpu_memory_fraction"] < 1
    assert v["env"] == {"VLLM_PP_LAYER_PARTITION": "8,8,8,8"} and len(v["per_node"]) == 1
    assert v["command"] == f"vllm serve {MODEL} " + shlex.join(v["args"])
    for f in ("--nnodes", "--data-parallel-size", "--quantization", "--kv-cache-dtype", "--headless"):
        assert flag(v["args"], f) is None


def test_old_plan_falls_back_to_the_request() -> None:
    """A plan from before token_budget and ep: the request's prefill chunk, no EP flags."""
    ex = export_plan(PLANS["old-plan"], MODEL)
    assert flag(ex["vllm"]["args"], "--max-num-batched-tokens") == "8192"
    assert flag(ex["vllm"]["args"], "--enable-expert-parallel") is None


def test_replicas_on_one_node_are_data_parallel() -> None:
    ex = export_plan(PLANS["replicas-one-node"], MODEL)
    assert flag(ex["vllm"]["args"], "--data-parallel-size") == "4" and len(ex["vllm"]["per_node"]) == 1
    assert flag(ex["sglang"]["args"], "--dp-size") == "4" and len(ex["sglang"]["per_node"]) == 1
    assert flag(ex["vllm"]["args"], "--max-num-seqs") == "16"  # per replica: each DP engine schedules its own


def test_replicas_over_nodes() -> None:
    """vLLM: one DP launch over both nodes (node-rank 1 headless); SGLang: a launch per replica."""
    ex = export_plan(PLANS["replicas-two-nodes"], MODEL)
    v = ex["vllm"]["per_node"]
    assert [flag(e["args"], "--node-rank") for e in v] == ["0", "1"]
    assert all(flag(e["args"], "--data-parallel-size") == "2" and flag(e["args"], "--nnodes") == "2" for e in v)
    assert flag(v[0]["args"], "--headless") is None and flag(v[1]["args"], "--headless") == ""
    s = ex["sglang"]["per_node"]
    assert [e["instance"] for e in s] == [0, 1] and [e["node"] for e in s] == [0, 1]
    assert flag(s[0]["args"], "--nnodes") is None and flag(s[0]["args"], "--dp-size") is None
    assert flag(s[0]["args"], "--port") != flag(s[1]["args"], "--port")
    assert any("router" in n for n in ex["sglang"]["notes"])


def test_four_replicas_on_two_nodes() -> None:
    """vLLM: two DP ranks per node in one launch; SGLang: four launches, the second on each node
    remapped to GPUs 4-7."""
    ex = export_plan(PLANS["dp4-two-nodes"], MODEL)
    v = ex["vllm"]["per_node"]
    assert len(v) == 2 and all(flag(e["args"], "--data-parallel-size") == "4" for e in v)
    assert [e["local_gpus"] for e in v] == [list(range(8))] * 2
    s = ex["sglang"]["per_node"]
    assert [(e["node"], e["env"].get("CUDA_VISIBLE_DEVICES")) for e in s] == [
        (0, None),
        (0, "4,5,6,7"),
        (1, None),
        (1, "4,5,6,7"),
    ]


def test_pipeline_over_nodes() -> None:
    """Node rank 0 hosts stage 0; every node exports the partition (read by each rank at load)."""
    ex = export_plan(PLANS["pp-two-nodes"], MODEL)
    for eng, addr in (("vllm", "--master-addr"), ("sglang", "--dist-init-addr")):
        nodes = ex[eng]["per_node"]
        assert [e["stages"] for e in nodes] == [[0, 1], [2, 3]]
        assert [flag(e["args"], "--node-rank") for e in nodes] == ["0", "1"]
        assert all(HEAD_ADDR in str(flag(e["args"], addr)) for e in nodes)
        assert all(e["env"][next(iter(ex[eng]["env"]))] == "8,8,8,8" for e in nodes)
        assert all("CUDA_VISIBLE_DEVICES" not in e["env"] for e in nodes)
    assert flag(ex["vllm"]["per_node"][1]["args"], "--headless") == ""


def test_expert_parallel_with_attention_dp() -> None:
    ex = export_plan(PLANS["ep-one-node"], MODEL)
    v, s, t = ex["vllm"]["args"], ex["sglang"]["args"], ex["trtllm"]["llm_args"]
    assert flag(v, "--tensor-parallel-size") == "1" and flag(v, "--data-parallel-size") == "8"
    assert flag(v, "--enable-expert-parallel") == "" and flag(v, "--max-num-seqs") == "32"  # 256 / 8 DP engines
    assert flag(s, "--tp-size") == "8" and flag(s, "--ep-size") == "8" and flag(s, "--attn-dp-size") == "8"
    assert flag(s, "--moe-a2a-backend") == "deepep" and flag(s, "--enable-dp-attention") is None
    assert flag(s, "--max-running-requests") == "256"  # SGLang divides it over the attention-DP ranks
    assert t["moe_expert_parallel_size"] == 8 and t["enable_attention_dp"] is True and t["max_batch_size"] == 32


def test_expert_parallel_with_tp_attention() -> None:
    ex = export_plan(PLANS["ep-tp-attention"], MODEL)
    v, s = ex["vllm"]["args"], ex["sglang"]["args"]
    assert flag(v, "--tensor-parallel-size") == "8" and flag(v, "--data-parallel-size") is None
    assert flag(v, "--enable-expert-parallel") == "" and flag(s, "--attn-dp-size") is None
    assert "enable_attention_dp" not in ex["trtllm"]["llm_args"]


def test_expert_parallel_replicas_are_separate_launches() -> None:
    """vLLM's DP ranks share one EP group, so replicas of an EP plan launch apart, on their own GPUs."""
    ex = export_plan(PLANS["ep-replicas-one-node"], MODEL)
    v = ex["vllm"]["per_node"]
    assert len(v) == 2 and [flag(e["args"], "--data-parallel-size") for e in v] == ["4", "4"]
    assert "CUDA_VISIBLE_DEVICES" not in v[0]["env"] and v[1]["env"]["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    assert flag(v[0]["args"], "--port") != flag(v[1]["args"], "--port")
    s = ex["sglang"]["per_node"]
    assert len(s) == 1 and flag(s[0]["args"], "--dp-size") == "2"  # SGLang: --dp-size counts replicas


def test_expert_parallel_over_nodes() -> None:
    """SGLang puts one stage per node as planned; vLLM numbers ranks DP-major, so each node runs both
    stages of half the DP ranks: the export says so rather than claiming the plan's placement."""
    ex = export_plan(PLANS["ep-pp-two-nodes"], MODEL)
    for eng in ("vllm", "sglang"):
        assert all(flag(e["args"], "--nnodes") == "2" for e in ex[eng]["per_node"])
    assert [e["stages"] for e in ex["sglang"]["per_node"]] == [[0], [1]]
    assert [e["stages"] for e in ex["vllm"]["per_node"]] == [[0, 1], [0, 1]]
    assert any("data-parallel first" in n for n in ex["vllm"]["notes"])


def test_mixed_cluster_in_pipeline_order() -> None:
    ex = export_plan(PLANS["mixed"], MODEL)
    for eng in ("vllm", "sglang"):
        nodes = ex[eng]["per_node"]
        assert [(e["gpu"], e["stages"], e["node_rank"]) for e in nodes] == [
            ("H100-SXM-80GB", [0, 1], 0),
            ("A100-SXM-80GB", [2, 3], 1),
        ]
        assert all(e["env"][next(iter(ex[eng]["env"]))] == "24,24,16,16" for e in nodes)


def test_cluster_file_hosts_name_the_head() -> None:
    """Host names from a cluster file replace the placeholder; the head is the host of stage 0."""
    groups = [H100_A100[0] | {"hosts": ["h100-a"]}, H100_A100[1] | {"hosts": ["a100-a"]}]
    plan = make_plan(
        tp=4,
        pp=4,
        groups=groups,
        partition=[16, 16, 24, 24],
        layers=80,
        stage_devices=[[8, 9, 10, 11], [12, 13, 14, 15], [0, 1, 2, 3], [4, 5, 6, 7]],
    )
    ex = export_plan(plan, MODEL)
    assert all(flag(e["args"], "--master-addr") == "a100-a" for e in ex["vllm"]["per_node"])
    assert all(flag(e["args"], "--dist-init-addr") == "a100-a:50000" for e in ex["sglang"]["per_node"])
    assert not any(HEAD_ADDR in n for n in ex["vllm"]["notes"] + ex["sglang"]["notes"])


def test_mixed_cluster_a100_first() -> None:
    """When the pipeline starts on the second group, its node is node-rank 0 (the head)."""
    ex = export_plan(PLANS["mixed-a100-first"], MODEL)
    nodes = ex["vllm"]["per_node"]
    assert [(e["node"], e["gpu"], e["stages"]) for e in nodes] == [
        (1, "A100-SXM-80GB", [0, 1]),
        (0, "H100-SXM-80GB", [2, 3]),
    ]
    assert flag(nodes[0]["args"], "--node-rank") == "0" and flag(nodes[0]["args"], "--headless") is None


def test_mixed_cluster_uneven_nodes() -> None:
    """Three stages on the H100 node, one on the A100 node: vLLM needs Ray, SGLang cannot place it."""
    ex = export_plan(PLANS["mixed-uneven"], MODEL)
    v = ex["vllm"]["per_node"]
    assert flag(v[0]["args"], "--distributed-executor-backend") == "ray" and flag(v[0]["args"], "--nnodes") is None
    assert v[1]["args"] == [] and v[1]["command"].startswith("ray start --address")
    assert v[1]["env"]["CUDA_VISIBLE_DEVICES"] == "4,5" and v[1]["stages"] == [3]
    assert v[0]["env"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5"  # else Ray may use the head's spare GPUs
    assert any("Ray" in n for n in ex["vllm"]["notes"])
    assert any("place them differently" in n for n in ex["sglang"]["notes"])
    head = export_plan(PLANS["mixed-uneven-ep"], MODEL)["vllm"]["per_node"][0]["args"]
    assert flag(head, "--data-parallel-backend") == "ray" and flag(head, "--data-parallel-size") == "2"


@pytest.mark.parametrize(
    ("name", "vllm_q", "sglang_q", "vllm_kv", "sglang_kv"),
    [
        ("fp8", "fp8", "fp8", "fp8", "fp8_e4m3"),
        ("int4", None, None, None, None),
        ("int8", None, None, "fp8", "fp8_e4m3"),
        ("single", None, None, None, None),
    ],
)
def test_quantisation(
    name: str, vllm_q: str | None, sglang_q: str | None, vllm_kv: str | None, sglang_kv: str | None
) -> None:
    ex = export_plan(PLANS[name], MODEL)
    v, s = ex["vllm"], ex["sglang"]
    assert flag(v["args"], "--quantization") == vllm_q and flag(s["args"], "--quantization") == sglang_q
    assert flag(v["args"], "--kv-cache-dtype") == vllm_kv and flag(s["args"], "--kv-cache-dtype") == sglang_kv
    if name in ("int4", "int8"):
        assert any("quantised offline" in n for n in v["notes"] + s["notes"])
        assert any("checkpoint" in n for n in ex["trtllm"]["notes"])
    if vllm_kv:
        assert ex["trtllm"]["llm_args"]["kv_cache_config"]["dtype"] == "fp8"


def test_fp16_sets_the_dtype() -> None:
    ex = export_plan(PLANS["fp16"], MODEL)
    assert flag(ex["vllm"]["args"], "--dtype") == "float16" == flag(ex["sglang"]["args"], "--dtype")


@pytest.mark.parametrize(
    ("ref", "want"),
    [
        ("/data/llama/config.json", "/data/llama"),
        ("./models/x/config.json", "./models/x"),
        ("config.json", "."),
        ("/data/llama", "/data/llama"),
        ("preset:llama-3.1-70b", "llama-3.1-70b"),
    ],
)
def test_model_argument_is_a_directory(ref: str, want: str) -> None:
    ex = export_plan(PLANS["single"], ref)
    assert ex["vllm"]["command"].startswith(f"vllm serve {want} ")
    assert f"--model-path {want} " in ex["sglang"]["command"] and ex["trtllm"]["command"].split()[1] == want
    assert ("config file" in " ".join(ex["vllm"]["notes"])) == ref.endswith(".json")


def test_render_multi_node_blocks() -> None:
    plan = PLANS["pp-two-nodes"] | {"exports": export_plan(PLANS["pp-two-nodes"], MODEL)}
    text = render_export(plan, "vllm")
    assert text.count("export VLLM_PP_LAYER_PARTITION=8,8,8,8") == 2 and text.count("vllm serve") == 2
    assert "node-rank 0: stages 0,1" in text and text.splitlines()[-1].endswith("--headless")
    single = render_export(PLANS["single"] | {"exports": export_plan(PLANS["single"], MODEL)}, "sglang")
    assert single.splitlines()[-2] == "export SGLANG_PP_LAYER_PARTITION=8,8,8,8"


@pytest.mark.parametrize("name", REAL)
def test_real_plans(name: str) -> None:
    """Plans from the planner: every GPU launched once, stages in order, the plan's partition and batch."""
    plan = real_plan(name)
    ex = plan["exports"]
    d = plan["degrees"]
    dep = read_deployment(plan, "x")
    for eng in ("vllm", "sglang"):
        nodes = ex[eng]["per_node"]
        assert sum(len(e["local_gpus"]) for e in nodes) == d["tp"] * d["pp"] * d["replicas"]
        for inst in {e["instance"] for e in nodes}:
            mine = [e for e in nodes if e["instance"] == inst]
            assert [e["node_rank"] for e in mine] == list(range(len(mine))) and 0 in mine[0]["stages"]
            assert sorted({k for e in mine for k in e["stages"]}) == list(range(d["pp"]))
        assert all(e["env"][next(iter(ex[eng]["env"]))] == dep.env_partition for e in nodes)
    assert ex["vllm"]["env"]["VLLM_PP_LAYER_PARTITION"] == ",".join(map(str, plan["partition"]))
    seqs = d["micro_batches"] * d["micro_batch_size"]
    assert flag(ex["sglang"]["args"], "--max-running-requests") == str(seqs)
    assert ex["trtllm"]["llm_args"]["pp_partition"] == plan["partition"]
    budget = plan["workload"].get("token_budget") or plan["request"]["prefill_chunk_tokens"]
    assert flag(ex["vllm"]["args"], "--max-num-batched-tokens") == str(budget)

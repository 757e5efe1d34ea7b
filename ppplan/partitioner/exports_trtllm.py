"""TensorRT-LLM LLM-API settings (``LLM(**llm_args)`` or ``trtllm-serve --extra_llm_api_options``).

Key names from ``BaseLlmArgs`` and ``KvCacheConfig`` in NVIDIA/TensorRT-LLM
tensorrt_llm/llmapi/llm_args.py (``pp_partition``: "a list of each rank's layer number", status
prototype); the accepted set is kept in tests/data/engines/trtllm-llm_args.json.
"""

from __future__ import annotations

import math
import shlex
from typing import Any

from ppplan.partitioner.exports_layout import Deployment

__all__ = ["TRTLLM_CONFIG_FILE", "trtllm_export"]

TRTLLM_CONFIG_FILE = "ppplan-trtllm.yaml"
"""the file name the printed command expects ``llm_args`` in (JSON is valid YAML)"""


def _moe(dep: Deployment, args: dict[str, Any], notes: list[str]) -> None:
    if dep.ep > 1:
        args["moe_expert_parallel_size"] = dep.ep
        args["moe_tensor_parallel_size"] = max(1, dep.tp // dep.ep)
    if dep.attention_dp > 1:
        args["enable_attention_dp"] = True
        if dep.attention_dp != dep.tp:
            notes.append(
                f"enable_attention_dp makes each of the {dep.tp} TP ranks its own attention-DP rank; "
                f"the plan assumed {dep.attention_dp}"
            )


def trtllm_export(dep: Deployment) -> dict[str, Any]:
    """``llm_args`` (max batch per rank, token budget, KV share), a ``trtllm-serve`` command, notes."""
    notes = list(dep.notes)
    per_rank = dep.attention_dp if dep.attention_dp > 1 else 1
    batch = math.ceil(dep.sequences / per_rank)
    if batch > dep.token_budget:
        notes.append(
            f"max_num_tokens {batch}, not the planned {dep.token_budget}: a step holds one token per "
            "sequence in generation, so it is at least max_batch_size"
        )
    kv: dict[str, Any] = {}
    if dep.free_fraction is not None:
        kv["free_gpu_memory_fraction"] = dep.free_fraction
        notes.append(
            f"kv_cache_config.free_gpu_memory_fraction {dep.free_fraction}: the KV room the plan assumes "
            "(usable HBM less weights, workspace and reserve) as a share of the memory free after weights and "
            "reserve, on the tightest stage (TensorRT-LLM's fraction is of free memory, not of HBM like vLLM's)"
        )
    if dep.kv_dtype == "fp8":
        kv["dtype"] = "fp8"
    args: dict[str, Any] = {
        "tensor_parallel_size": dep.tp,
        "pipeline_parallel_size": dep.pp,
        "pp_partition": list(dep.partition),
        "max_batch_size": batch,
        "max_num_tokens": max(dep.token_budget, batch),
        "max_seq_len": dep.context,
        "enable_chunked_prefill": True,
    }
    if kv:
        args["kv_cache_config"] = kv
    _moe(dep, args, notes)
    if dep.weight_dtype in ("fp8", "int8", "int4"):
        notes.append(
            f"weights {dep.weight_dtype}: TensorRT-LLM's PyTorch backend reads the quantisation from the "
            "checkpoint: use a ModelOpt-quantised one (e.g. an -FP8 / -W4A16 release or `modelopt` output)"
        )
    if dep.replicas > 1:
        notes.append(f"replicas: {dep.replicas} launches of these settings, behind a load balancer")
    if dep.tp * dep.pp > min(s[3] for s in dep.node_of):
        notes.append("multi-node: launch with mpirun/srun through trtllm-llmapi-launch, one rank per GPU")
    return {
        "llm_args": args,
        "config_file": TRTLLM_CONFIG_FILE,
        "command": f"trtllm-serve {shlex.quote(dep.model)} --extra_llm_api_options {TRTLLM_CONFIG_FILE}",
        "notes": notes,
        "note": "pass as LLM(model, **llm_args) or write llm_args to the YAML file the command names",
    }

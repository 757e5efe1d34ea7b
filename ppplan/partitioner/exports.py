"""Launch settings for the engines, from a Plan. The partition is always explicit: the engines'
defaults differ from each other (see :mod:`partitioner.baselines`)."""

from __future__ import annotations

import json
import shlex
from typing import Any, Literal, get_args

from ppplan.core.errors import PpplanError

__all__ = ["ENGINE_FORMATS", "EXPORT_FORMATS", "SHELL_FORMATS", "ExportFormat", "export_plan", "render_export"]

ExportFormat = Literal["vllm", "sglang", "trtllm", "torch", "json"]
"""a format :func:`render_export` knows (the type for request validation)"""
EXPORT_FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)
"""every format :func:`render_export` knows, in the order help texts list them"""
ENGINE_FORMATS: tuple[ExportFormat, ...] = tuple(f for f in EXPORT_FORMATS if f != "json")
"""the engines' and torch's settings: every format but the whole plan as JSON"""
SHELL_FORMATS: tuple[ExportFormat, ...] = ("vllm", "sglang")
"""formats rendered as shell lines (export the partition variable, then the launch command); the rest are JSON"""

_KV_FLAG = {"vllm": {"fp8": "fp8"}, "sglang": {"fp8": "fp8_e4m3"}}


def export_plan(plan: dict[str, Any], model_ref: str) -> dict[str, dict[str, Any]]:
    """Every engine's settings for ``plan`` (a Plan as a JSON dict), keyed by format name.

    Args:
        plan: the plan as a JSON dict.
        model_ref: what the engines load (a hub id or a model directory), see
            :attr:`ppplan.core.model_source.ModelSource.engine_ref`.
    """
    d = plan["degrees"]
    part = ",".join(str(x) for x in plan["partition"])
    model = model_ref
    ctx = plan["workload"]["context"]
    util = plan["request"].get("gpu_memory_utilization", 0.9)
    kv = plan["kv_dtype"]
    seqs = d["micro_batches"] * d["micro_batch_size"]

    vllm_args = [
        "--tensor-parallel-size",
        str(d["tp"]),
        "--pipeline-parallel-size",
        str(d["pp"]),
        "--max-model-len",
        str(ctx),
        "--gpu-memory-utilization",
        str(util),
        "--max-num-seqs",
        str(seqs),
    ]
    if d["replicas"] > 1:
        vllm_args += ["--data-parallel-size", str(d["replicas"])]
    if kv in _KV_FLAG["vllm"]:
        vllm_args += ["--kv-cache-dtype", _KV_FLAG["vllm"][kv]]
    sg_args = [
        "--tp-size",
        str(d["tp"]),
        "--pp-size",
        str(d["pp"]),
        "--context-length",
        str(ctx),
        "--mem-fraction-static",
        str(util),
        "--max-running-requests",
        str(seqs),
    ]
    if d["replicas"] > 1:
        sg_args += ["--dp-size", str(d["replicas"])]
    if kv in _KV_FLAG["sglang"]:
        sg_args += ["--kv-cache-dtype", _KV_FLAG["sglang"][kv]]
    return {
        "vllm": {
            "args": vllm_args,
            "env": {"VLLM_PP_LAYER_PARTITION": part},
            "command": f"vllm serve {shlex.quote(model)} " + shlex.join(vllm_args),
        },
        "sglang": {
            "args": sg_args,
            "env": {"SGLANG_PP_LAYER_PARTITION": part},
            "command": f"python -m sglang.launch_server --model-path {shlex.quote(model)} " + shlex.join(sg_args),
        },
        "trtllm": {
            "llm_args": {
                "tensor_parallel_size": d["tp"],
                "pipeline_parallel_size": d["pp"],
                "pp_partition": list(plan["partition"]),
            },
            "note": "pass as LLM(model, tensor_parallel_size=..., pipeline_parallel_size=..., "
            "pp_partition=[...]) or the same keys in an extra-llm-api-options YAML",
        },
        "torch": {
            "stages": [list(s["modules"]) for s in plan["stages"]],
            "note": "module names per stage for torch.distributed.pipelining / torchtitan "
            "(e.g. pipeline_module_split); the same names the executor materialises",
        },
    }


def render_export(plan: dict[str, Any], fmt: str) -> str:
    """Text of one export format: shell lines (vllm, sglang: export the partition variable, then the
    launch command), JSON (trtllm, torch, json).

    Raises:
        PpplanError: unknown format, naming the known ones.
    """
    if fmt not in EXPORT_FORMATS:
        raise PpplanError("format", rule=f"{fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "json":
        return json.dumps(plan, indent=1)
    ex = plan.get("exports") or export_plan(plan, str(plan["model_source"]).removeprefix("preset:"))
    e = ex[fmt]
    if fmt in SHELL_FORMATS:
        env = "\n".join(f"export {k}={v}" for k, v in e["env"].items())
        return f"{env}\n{e['command']}"
    if fmt == "trtllm":
        return json.dumps(e["llm_args"], indent=1)
    return json.dumps(e["stages"], indent=1)

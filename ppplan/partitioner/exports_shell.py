"""Pieces the vLLM and SGLang exports share: quantisation flags, per-node launch entries."""

from __future__ import annotations

import shlex
from typing import Any

from ppplan.partitioner.exports_layout import Deployment, Instance, NodeSlot

__all__ = ["context_note", "launch_entry", "quantization_args"]


def quantization_args(dep: Deployment, engine: str) -> tuple[list[str], list[str]]:
    """(flags, notes) for the plan's weight dtype; only flags the engine's parser and loader accept
    on the planned checkpoint: int4/int8 need a checkpoint quantised offline, whose config.json names
    the method, so no flag is printed for them."""
    w = dep.weight_dtype
    if w == "fp8":
        return ["--quantization", "fp8"], [
            f"weights fp8: {engine} quantises a bf16/fp16 checkpoint to fp8 at load (--quantization fp8); "
            "a checkpoint already stored in fp8 is read as such"
        ]
    if w in ("int4", "int8"):
        kind = "GPTQ/AWQ or compressed-tensors W4A16" if w == "int4" else "compressed-tensors or W8A8-int8"
        return [], [
            f"weights {w}: needs a checkpoint quantised offline ({kind}); point the model argument at it, "
            f"{engine} reads the method from its config.json (no --quantization flag needed)"
        ]
    if w == "fp16":
        return ["--dtype", "float16"], []
    return [], []


def context_note(dep: Deployment, flag: str) -> str:
    """Why the max model length is what it is."""
    return (
        f"{flag} {dep.context}: the workload's context (prompt + output tokens per sequence, as planned); "
        "longer requests are refused, a larger value leaves room for fewer sequences"
    )


def launch_entry(
    inst: Instance,
    slot: NodeSlot,
    *,
    prefix: str,
    args: list[str],
    env: dict[str, str],
    pin: bool = False,
) -> dict[str, Any]:
    """One node's launch: what it hosts, its environment and command. ``pin``: list the GPUs even
    when they are the node's first ones (Ray schedules onto every GPU it sees)."""
    env = dict(env)
    if slot.needs_visible_devices or (pin and len(slot.local_devices) < slot.gpus_per_node):
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in slot.local_devices)
    return {
        "instance": inst.index,
        "replicas": list(inst.replicas),
        "node": slot.node,
        "node_rank": slot.node_rank,
        "gpu": slot.gpu,
        "stages": list(slot.stages),
        "local_gpus": list(slot.local_devices),
        "env": env,
        "args": args,
        "command": prefix + shlex.join(args),
    }

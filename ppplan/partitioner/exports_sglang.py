"""SGLang launch settings (``python -m sglang.launch_server``), checked against SGLang 0.5.23.

Multi-node: with ``--nnodes N``, node rank r hosts pipeline ranks ``(pp/N)·r …`` (or, when N > pp,
a ``tp·pp/N`` share of one stage), local GPU ``(pp_rank mod pp/N)·tp/node + tp_rank``
(sglang/srt/entrypoints/engine.py ``_calculate_rank_ranges``), so node rank 0 hosts stage 0.
``SGLANG_PP_LAYER_PARTITION`` is read by every rank at model load (sglang/srt/distributed/utils.py
``get_pp_indices``; ignored when pp = 1). In 0.5.23 ``--dp-size`` counts replicas and attention data
parallelism is ``--attn-dp-size`` (``--enable-dp-attention`` is deprecated; sglang/srt/server_args.py).
"""

from __future__ import annotations

import shlex
from typing import Any

from ppplan.partitioner.exports_layout import HEAD_ADDR, Deployment, Instance
from ppplan.partitioner.exports_shell import context_note, launch_entry, quantization_args

__all__ = ["sglang_export"]

# SGLang's --kv-cache-dtype choices spell the fp8 format out (no bare "fp8")
_KV = {"fp8": "fp8_e4m3"}
DIST_PORT = 50000
"""``--dist-init-addr`` port; instance i uses 50000 + i"""
API_PORT = 30000


def _degrees(dep: Deployment, packed: bool) -> tuple[list[str], list[str]]:
    args = ["--tp-size", str(dep.tp), "--pp-size", str(dep.pp)]
    notes: list[str] = []
    if dep.pp > 1:
        # SGLang's default micro-batch is max-running-requests // pp; pin the planned one
        args += ["--pp-max-micro-batch-size", str(dep.micro_batch_size)]
    if packed:
        args += ["--dp-size", str(dep.replicas)]
    if dep.ep > 1:
        args += ["--ep-size", str(dep.ep)]
    if dep.attention_dp > 1:
        args += ["--attn-dp-size", str(dep.attention_dp)]
    if dep.ep > 1 and dep.ep == dep.tp:
        args += ["--moe-a2a-backend", "deepep"]
        notes.append(
            "--moe-a2a-backend deepep: DeepEP all-to-all for the expert dispatch (needs the deep_ep package); "
            "without it SGLang falls back to all-gather/reduce-scatter dispatch"
        )
    return args, notes


def _layout_note(inst: Instance, dep: Deployment) -> str | None:
    """Why SGLang's --nnodes placement would differ from the plan's, if it does."""
    n = len(inst.nodes)
    if n == 1:
        return None
    counts = [len(s.stages) for s in inst.nodes]
    fits = inst.uniform and (
        (dep.pp % n == 0 and counts == [dep.pp // n] * n) or (n % dep.pp == 0 and counts == [1] * n)
    )
    if fits:
        return None
    return (
        f"SGLang's --nnodes launcher gives every node pp/nnodes stages; this plan's nodes host {counts} "
        "stages, so SGLang would place them differently: use the vLLM export (Ray backend) for this layout"
    )


def _instance_entries(dep: Deployment, inst: Instance, common: list[str], many: bool) -> list[dict[str, Any]]:
    env = {"SGLANG_PP_LAYER_PARTITION": dep.env_partition}
    prefix = f"python -m sglang.launch_server --model-path {shlex.quote(dep.model)} "
    port = ["--port", str(API_PORT + inst.index)] if many else []
    if len(inst.nodes) == 1:
        return [launch_entry(inst, inst.nodes[0], prefix=prefix, args=common + port, env=env)]
    out = []
    for slot in inst.nodes:
        multi = ["--nnodes", str(len(inst.nodes)), "--node-rank", str(slot.node_rank)]
        multi += ["--dist-init-addr", f"{inst.head}:{DIST_PORT + inst.index}"]
        out.append(launch_entry(inst, slot, prefix=prefix, args=common + multi + port, env=env))
    return out


def sglang_export(dep: Deployment) -> dict[str, Any]:
    """SGLang server settings: ``args``/``env``/``command`` of the head launch, ``per_node`` launches
    in pipeline order, and ``notes``."""
    insts = dep.instances(pack=True)
    packed = dep.replicas > 1 and len(insts[0].nodes) == 1
    if not packed:
        insts = dep.instances(pack=False)
    par, notes = _degrees(dep, packed)
    quant, qnotes = quantization_args(dep, "SGLang")
    common = [
        *par,
        "--context-length",
        str(dep.context),
        "--max-running-requests",
        str(dep.sequences),
        "--chunked-prefill-size",
        str(dep.token_budget),
        "--mem-fraction-static",
        str(dep.gpu_memory_utilization),
        *quant,
    ]
    if dep.kv_dtype in _KV:
        common += ["--kv-cache-dtype", _KV[dep.kv_dtype]]
    notes = [*dep.notes, context_note(dep, "--context-length"), *notes, *qnotes]
    if dep.replicas > 1 and not packed:
        notes.append("replicas: one SGLang launch each (they span nodes), behind sglang-router or a load balancer")
    notes += sorted({n for i in insts if (n := _layout_note(i, dep))})
    entries = [e for inst in insts for e in _instance_entries(dep, inst, common, len(insts) > 1)]
    if any(len(i.nodes) > 1 and i.head == HEAD_ADDR for i in insts):
        notes.append(f"replace {HEAD_ADDR} with the address of node-rank 0 (it hosts pipeline stage 0)")
    head = entries[0]
    return {
        "args": head["args"],
        "env": {"SGLANG_PP_LAYER_PARTITION": dep.env_partition},
        "command": head["command"],
        "per_node": entries,
        "notes": notes,
    }

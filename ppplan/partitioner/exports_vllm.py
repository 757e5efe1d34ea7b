"""vLLM launch settings (``vllm serve``), checked against vLLM 0.33.0's parser and launcher.

Multi-node: vLLM's multiprocessing backend takes ``--nnodes/--node-rank/--master-addr/--master-port``
and splits the world (DP × PP × TP ranks, TP innermost) evenly over the nodes, so node rank r hosts
ranks ``r·L … (r+1)·L − 1`` (vllm/engine/arg_utils.py, ``create_engine_config``); nodes other than
rank 0 run ``--headless``. An uneven split (a mixed cluster whose nodes host different numbers of
stages) needs the Ray backend. ``VLLM_PP_LAYER_PARTITION`` is read by every worker at model load
(vllm/distributed/utils.py ``get_pp_indices``), so it is exported on every node.
"""

from __future__ import annotations

import math
import shlex
from typing import Any

from ppplan.partitioner.exports_layout import HEAD_ADDR, Deployment, Instance
from ppplan.partitioner.exports_shell import context_note, launch_entry, quantization_args

__all__ = ["vllm_export"]

_KV = {"fp8": "fp8"}
MASTER_PORT = 29501
"""vLLM's default ``--master-port``; instance i uses 29501 + i"""
API_PORT = 8000


def _degrees(dep: Deployment, packed: bool) -> tuple[list[str], list[str], int, int]:
    """Parallel flags, notes, sequences per engine core (vLLM schedules per DP rank), DP size."""
    notes: list[str] = []
    dp, tp = 1, dep.tp
    if dep.is_moe_parallel:
        if dep.tp % dep.attention_dp == 0:
            dp, tp = dep.attention_dp, dep.tp // dep.attention_dp
        else:
            notes.append(f"attention_dp {dep.attention_dp} does not divide TP {dep.tp}: run with TP attention")
    elif packed:
        dp = dep.replicas
    args = ["--tensor-parallel-size", str(tp), "--pipeline-parallel-size", str(dep.pp)]
    if dp > 1:
        args += ["--data-parallel-size", str(dp)]
    if dep.ep > 1:
        args.append("--enable-expert-parallel")
        notes.append(
            f"expert parallel: vLLM spreads the experts over DP × TP = {dp * tp} GPUs per stage"
            + ("" if dp * tp == dep.ep else f" (the plan assumed EP {dep.ep}; vLLM has no separate EP degree)")
        )
    if dep.is_moe_parallel and dep.replicas > 1:
        notes.append(
            "replicas: one vLLM launch each (vLLM's data-parallel ranks form one expert-parallel group), "
            "behind a load balancer"
        )
    seqs = math.ceil(dep.sequences / dp) if dep.is_moe_parallel else dep.sequences
    per_node = min(s[3] for s in dep.node_of)
    if dep.is_moe_parallel and dp > 1 and dep.pp > 1 and dep.tp <= per_node < dep.gpus_per_replica:
        notes.append(
            "vLLM orders ranks data-parallel first: each node runs whole pipelines of some DP ranks, so the "
            "expert all-to-all crosses nodes where the plan kept it inside one (slower than planned)"
        )
    return args, notes, seqs, dp


def _instance_entries(dep: Deployment, inst: Instance, common: list[str], many: bool, dp: int) -> list[dict[str, Any]]:
    """Per-node launches of one instance (``dp``: its data-parallel size)."""
    env = {"VLLM_PP_LAYER_PARTITION": dep.env_partition}
    prefix = f"vllm serve {shlex.quote(dep.model)} "
    port = ["--port", str(API_PORT + inst.index)] if many else []
    if len(inst.nodes) == 1:
        return [launch_entry(inst, inst.nodes[0], prefix=prefix, args=common + port, env=env)]
    if not inst.uniform:
        head = ["--distributed-executor-backend", "ray", *(["--data-parallel-backend", "ray"] if dp > 1 else []), *port]
        entries = []
        for slot in inst.nodes:
            if slot.node_rank == 0:
                e = launch_entry(inst, slot, prefix=prefix, args=common + head, env=env, pin=True)
                e["command"] = f"ray start --head --port 6379 && {e['command']}"
            else:
                e = launch_entry(inst, slot, prefix="", args=[], env=env, pin=True)
                e["command"] = f"ray start --address {inst.head}:6379"
            entries.append(e)
        return entries
    out = []
    for slot in inst.nodes:
        multi = ["--nnodes", str(len(inst.nodes)), "--node-rank", str(slot.node_rank)]
        multi += ["--master-addr", inst.head, "--master-port", str(MASTER_PORT + inst.index)]
        extra = ["--headless"] if slot.node_rank else port
        out.append(launch_entry(inst, slot, prefix=prefix, args=common + multi + extra, env=env))
    if dp > 1 and dep.pp > 1 and dep.is_moe_parallel:
        # vLLM numbers ranks DP × PP × TP (vllm/distributed/parallel_state.py), DP outermost: a node
        # holds whole pipelines of some DP ranks, not one stage of all of them as the plan does
        per_node = dep.gpus_per_replica // len(inst.nodes)
        tp = dep.tp // dp
        for e in out:
            first = e["node_rank"] * per_node
            e["stages"] = sorted({(r // tp) % dep.pp for r in range(first, first + per_node)})
    return out


def vllm_export(dep: Deployment) -> dict[str, Any]:
    """``vllm serve`` settings: ``args``/``env``/``command`` of the first (head) launch, ``per_node``
    launches in pipeline order, and ``notes``."""
    packed = not dep.is_moe_parallel and dep.replicas > 1
    insts = dep.instances(pack=packed)
    if packed and not insts[0].uniform:
        packed, insts = False, dep.instances(pack=False)
    par, notes, seqs, dp = _degrees(dep, packed)
    quant, qnotes = quantization_args(dep, "vLLM")
    common = [
        *par,
        "--max-model-len",
        str(dep.context),
        "--max-num-seqs",
        str(seqs),
        "--max-num-batched-tokens",
        str(max(dep.token_budget, seqs)),
        "--gpu-memory-utilization",
        str(dep.gpu_memory_utilization),
        *quant,
    ]
    if dep.kv_dtype in _KV:
        common += ["--kv-cache-dtype", _KV[dep.kv_dtype]]
    notes = [*dep.notes, context_note(dep, "--max-model-len"), *notes, *qnotes]
    if seqs > dep.token_budget:
        notes.append(
            f"--max-num-batched-tokens {seqs}, not the planned {dep.token_budget}: vLLM requires at least "
            "--max-num-seqs (one decode token per running sequence per step)"
        )
    if not packed and not dep.is_moe_parallel and dep.replicas > 1:
        notes.append("replicas: one vLLM launch each (the replicas do not split evenly over nodes)")
    entries = [e for inst in insts for e in _instance_entries(dep, inst, common, len(insts) > 1, dp)]
    if any(len(i.nodes) > 1 and not i.uniform for i in insts):
        notes.append(
            "nodes host different numbers of GPUs, which vLLM's --nnodes launcher cannot split: Ray backend; "
            "start the head on the node of stage 0 (Ray ranks the driver's GPUs first) and export "
            "VLLM_PP_LAYER_PARTITION before `ray start` on every node; check the rank-to-node table vLLM logs"
        )
    if any(len(i.nodes) > 1 and i.head == HEAD_ADDR for i in insts):
        notes.append(f"replace {HEAD_ADDR} with the address of node-rank 0 (it hosts pipeline stage 0)")
    head = entries[0]
    return {
        "args": head["args"],
        "env": {"VLLM_PP_LAYER_PARTITION": dep.env_partition},
        "command": head["command"],
        "per_node": entries,
        "notes": notes,
    }

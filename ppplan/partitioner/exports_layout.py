"""What the engine exports read from a plan: degrees, batch, token budget, dtypes, and where each
pipeline stage runs (node, GPUs), replica by replica.

Plan fields are read with fallbacks so that plans from before schema minor 1 (no ``ep``, no
``token_budget``, no ``cluster.groups``) export the same settings as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["HEAD_ADDR", "Deployment", "Instance", "NodeSlot", "read_deployment"]

HEAD_ADDR = "HEAD_NODE_IP"
"""Placeholder for the address of the node that hosts pipeline rank 0 (replaced by the user)."""


@dataclass(frozen=True, slots=True)
class NodeSlot:
    """The GPUs of one engine instance on one node, in rank order."""

    node: int
    """the plan's node index (``stages[k].node``; global over the cluster)"""
    node_rank: int
    """the node's rank within the instance: pipeline order, 0 hosts stage 0"""
    gpu: str
    """catalog name of the node's GPUs"""
    stages: tuple[int, ...]
    """pipeline stages (indices) with GPUs on this node"""
    local_devices: tuple[int, ...]
    """the node-local GPU indices, in rank order (TP rank inside stage, then stage)"""
    gpus_per_node: int
    host: str | None = None
    """the node's host name when the cluster file names it"""

    @property
    def needs_visible_devices(self) -> bool:
        """Whether ``CUDA_VISIBLE_DEVICES`` must be set: the engines bind rank i to local GPU i, so
        any other set or order of GPUs has to be remapped."""
        return self.local_devices != tuple(range(len(self.local_devices)))


@dataclass(frozen=True, slots=True)
class Instance:
    """One engine launch: one replica, or (``replicas`` > 1) several packed as data parallelism."""

    index: int
    replicas: tuple[int, ...]
    """the plan replicas this launch serves"""
    nodes: tuple[NodeSlot, ...]
    """per node, in pipeline (node-rank) order"""

    @property
    def head(self) -> str:
        """Address of node-rank 0: its host name from the cluster file, else :data:`HEAD_ADDR`."""
        return self.nodes[0].host or HEAD_ADDR

    @property
    def uniform(self) -> bool:
        """Whether every node holds the same number of this instance's GPUs: ``--nnodes`` launchers
        (vLLM's multiprocessing backend, SGLang) split the world evenly over nodes."""
        return len({len(s.local_devices) for s in self.nodes}) == 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Deployment:
    """The settings every engine export needs, read from a plan (tokens, GiB, shares of HBM)."""

    model: str
    """the engine's model argument: a hub id or a directory, never a config.json file"""
    notes: tuple[str, ...]
    tp: int
    pp: int
    replicas: int
    ep: int
    """expert-parallel degree (1: experts split by TP like dense layers)"""
    attention_dp: int
    """data-parallel attention ranks per stage (1: TP attention)"""
    micro_batch_size: int
    sequences: int
    """sequences in flight per replica"""
    token_budget: int
    """tokens per engine step (chunked prefill budget)"""
    context: int
    """KV tokens per sequence (max model length)"""
    gpu_memory_utilization: float
    weight_dtype: str
    kv_dtype: str
    partition: tuple[int, ...]
    free_fraction: float | None
    """TensorRT-LLM's ``free_gpu_memory_fraction``: the KV room the plan assumes as a share of the memory
    left after weights and the runtime reserve, on the tightest stage (None without stage memory)"""
    stage_devices: tuple[tuple[int, ...], ...]
    """per stage, global GPU ids in replica 0"""
    node_of: tuple[tuple[int, int, str, int], ...]
    """per global GPU id: (node, node-local index, GPU name, GPUs per node)"""
    hosts: dict[int, str]
    """host name per node, where the cluster file gives them (``cluster.groups[i].hosts``)"""

    @property
    def is_moe_parallel(self) -> bool:
        """Whether experts or attention are spread differently from dense TP."""
        return self.ep > 1 or self.attention_dp > 1

    @property
    def gpus_per_replica(self) -> int:
        return self.tp * self.pp

    @property
    def env_partition(self) -> str:
        """The layer partition as the engines' ``*_PP_LAYER_PARTITION`` variables read it: decimal
        layer counts per stage, comma-separated, no spaces (vLLM and SGLang ``get_pp_indices``)."""
        return ",".join(str(x) for x in self.partition)

    def replica_slots(self, replica: int) -> list[NodeSlot]:
        """The nodes of one replica in pipeline order. Replica r's GPUs are replica 0's shifted by
        ``r × tp × pp`` (the layout :func:`ppplan.partitioner.space.inter_node` assumes)."""
        offset = replica * self.gpus_per_replica
        order: list[int] = []
        by_node: dict[int, tuple[list[int], list[int], str, int]] = {}
        for k, devs in enumerate(self.stage_devices):
            for g in devs:
                node, local, gpu, per_node = self.node_of[min(g + offset, len(self.node_of) - 1)]
                if node not in by_node:
                    order.append(node)
                    by_node[node] = ([], [], gpu, per_node)
                stages, locals_, _, _ = by_node[node]
                if k not in stages:
                    stages.append(k)
                locals_.append(local)
        return [
            NodeSlot(
                n, rank, by_node[n][2], tuple(by_node[n][0]), tuple(by_node[n][1]), by_node[n][3], self.hosts.get(n)
            )
            for rank, n in enumerate(order)
        ]

    def instances(self, pack: bool) -> list[Instance]:
        """The engine launches: all replicas as one data-parallel launch (``pack``), else one per replica."""
        if not pack:
            return [Instance(r, (r,), tuple(self.replica_slots(r))) for r in range(self.replicas)]
        merged: dict[int, NodeSlot] = {}
        for r in range(self.replicas):
            for s in self.replica_slots(r):
                old = merged.get(s.node)
                if old is None:
                    merged[s.node] = NodeSlot(
                        s.node, len(merged), s.gpu, s.stages, s.local_devices, s.gpus_per_node, s.host
                    )
                else:
                    stages = old.stages + tuple(k for k in s.stages if k not in old.stages)
                    merged[s.node] = NodeSlot(
                        old.node,
                        old.node_rank,
                        old.gpu,
                        stages,
                        old.local_devices + s.local_devices,
                        old.gpus_per_node,
                        old.host,
                    )
        return [Instance(0, tuple(range(self.replicas)), tuple(merged.values()))]


def _model_arg(model_ref: str) -> tuple[str, list[str]]:
    """The engines load a directory or a hub id; a config.json path becomes its directory."""
    ref = model_ref.removeprefix("preset:")
    if ref.rsplit("/", 1)[-1].lower().endswith(".json"):
        head = ref.rsplit("/", 1)[0] if "/" in ref else "."
        return head or "/", [
            f"model: {ref} is a config file; the engines load the directory that holds it "
            f"({head or '/'}), which must also hold the weights and tokenizer"
        ]
    return ref, []


def _node_table(plan: dict[str, Any], count: int) -> list[tuple[int, int, str, int]]:
    """(node, local index, GPU name, GPUs per node) of every global GPU id: the groups of a mixed
    cluster in order, else one kind spread over ``gpus_per_node``."""
    cluster = plan.get("cluster") or {}
    groups = cluster.get("groups") or [
        {
            "gpu": cluster.get("gpu", "GPU"),
            "nodes": cluster.get("nodes", 1),
            "gpus_per_node": cluster.get("gpus_per_node") or max(count, 1),
        }
    ]
    table: list[tuple[int, int, str, int]] = []
    node = 0
    for g in groups:
        per = int(g.get("gpus_per_node") or g.get("count") or 1)
        nodes = int(g.get("nodes") or max(1, -(-int(g.get("count") or per) // per)))
        for n in range(nodes):
            table += [(node + n, i, str(g.get("gpu", "GPU")), per) for i in range(per)]
        node += nodes
    while len(table) < count:  # a plan larger than its cluster record: keep counting nodes
        per = table[-1][3] if table else max(count, 1)
        n = table[-1][0] + 1 if table else 0
        table += [(n, i, table[-1][2] if table else "GPU", per) for i in range(per)]
    return table


def _hosts(plan: dict[str, Any]) -> dict[int, str]:
    """Host name per node from ``cluster.groups[i].hosts`` (cluster files may name them)."""
    out: dict[int, str] = {}
    node = 0
    for g in (plan.get("cluster") or {}).get("groups") or []:
        for i, host in enumerate(g.get("hosts") or []):
            out[node + i] = str(host)
        node += int(g.get("nodes") or 1)
    return out


def _free_fraction(stages: list[dict[str, Any]], util: float) -> float | None:
    """KV share of the memory free after weights and reserve, tightest stage, rounded down to 0.01.

    A stage's HBM is its ``limit_gib`` / ``util`` (the limit is the usable share of HBM), which holds
    for the GPUs of each stage in a mixed cluster too.
    """
    fractions = []
    for s in stages:
        m = s.get("memory") or {}
        if not {"weights_gib", "limit_gib"} <= m.keys() or util <= 0:
            return None
        hbm = m["limit_gib"] / util
        fixed = m["weights_gib"] + m.get("reserve_gib", 0.0)
        free = hbm - fixed
        if free <= 0:
            return None
        fractions.append(max(0.01, min((m["limit_gib"] - fixed - m.get("workspace_gib", 0.0)) / free, 0.99)))
    return int(min(fractions) * 100) / 100 if fractions else None


def read_deployment(plan: dict[str, Any], model_ref: str) -> Deployment:
    """The deployment a plan describes (see :class:`Deployment`)."""
    d = plan["degrees"]
    req = plan.get("request") or {}
    wl = plan.get("workload") or {}
    stages = plan.get("stages") or []
    # degrees.tp is the attention TP: a stage runs on tp × attention_dp GPUs
    tp, pp, replicas = int(d["tp"]) * int(d.get("attention_dp") or 1), int(d["pp"]), int(d.get("replicas", 1))
    model, notes = _model_arg(model_ref)
    mbs = int(d.get("micro_batch_size", 1))
    seqs = int(d.get("micro_batches", 1)) * mbs
    budget = wl.get("token_budget") or req.get("prefill_chunk_tokens") or 8192
    stage_devices = tuple(tuple(s.get("devices") or range(k * tp, (k + 1) * tp)) for k, s in enumerate(stages))
    if len(stage_devices) != pp:
        stage_devices = tuple(tuple(range(k * tp, (k + 1) * tp)) for k in range(pp))
    table = _node_table(plan, tp * pp * replicas)
    return Deployment(
        model=model,
        notes=tuple(notes),
        tp=tp,
        pp=pp,
        replicas=replicas,
        ep=int(d.get("ep") or 1),
        attention_dp=int(d.get("attention_dp") or 1),
        micro_batch_size=mbs,
        sequences=seqs,
        token_budget=int(budget),
        context=int(wl.get("context") or req.get("context") or 0),
        gpu_memory_utilization=float(req.get("gpu_memory_utilization", 0.9)),
        weight_dtype=str(plan.get("weight_dtype") or req.get("weight_dtype") or "bf16"),
        kv_dtype=str(plan.get("kv_dtype") or req.get("kv_dtype") or "bf16"),
        partition=tuple(int(x) for x in plan["partition"]),
        free_fraction=_free_fraction(stages, float(req.get("gpu_memory_utilization", 0.9))),
        stage_devices=stage_devices,
        node_of=tuple(table),
        hosts=_hosts(plan),
    )

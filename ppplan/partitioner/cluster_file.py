"""``--cluster FILE``: the JSON description of a cluster's nodes, strictly validated.

Errors name the key path (``cluster.nodes[1].count``); unknown keys are refused rather than
ignored, so a misspelt ``interconect`` cannot silently fall back to a default.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ppplan.core.errors import PpplanError, shorten
from ppplan.core.gpus import get_gpu
from ppplan.core.text import check_strings
from ppplan.partitioner.cluster import INTERCONNECTS, Cluster, GpuGroup, default_interconnect, merge_groups
from ppplan.partitioner.request import MAX_GPUS

__all__ = ["MAX_CLUSTER_FILE", "NETWORK_KINDS", "parse_cluster_file"]

MAX_CLUSTER_FILE = 1 << 20
"""Longest ``--cluster`` file accepted, characters (1 MiB: thousands of node entries)."""

NETWORK_KINDS: dict[str, float] = {
    "ib-200g": 25e9,
    "ib-400g": 50e9,
    "ib-800g": 100e9,
    "roce-100g": 12.5e9,
    "roce-200g": 25e9,
    "roce-400g": 50e9,
    "eth-25g": 3.125e9,
    "eth-100g": 12.5e9,
}
"""Bytes/s per GPU and direction of the usual one-NIC-per-GPU fabrics (line rate / 8: a 400 Gb/s
ConnectX-7 port moves 50 GB/s), used when a cluster file names ``network.kind`` without ``gbps``."""

_NODE_KEYS = {"gpu", "count", "nodes", "interconnect", "intra_gbps", "host"}
_NETWORK_KEYS = {"kind", "gbps"}
_TOP_KEYS = {"nodes", "network"}


def _int_field(entry: dict[str, Any], key: str, at: str, default: int | None = None) -> int:
    v = entry.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise PpplanError(f"{at}.{key}", v, rule="must be a positive integer")
    if not 1 <= v <= MAX_GPUS:
        raise PpplanError(f"{at}.{key}", v, rule=f"must be between 1 and {MAX_GPUS}")
    return v


def _gbps_field(entry: dict[str, Any], key: str, at: str) -> float | None:
    v = entry.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not 0 < v <= 1e5:
        raise PpplanError(f"{at}.{key}", v, rule="must be a number of GB/s per GPU and direction, 0 < x ≤ 100000")
    return float(v) * 1e9


def _unknown_keys(entry: dict[str, Any], allowed: set[str], at: str) -> None:
    extra = sorted(set(entry) - allowed)
    if extra:
        raise PpplanError(f"{at}.{extra[0]}", rule=f"unknown key; allowed: {', '.join(sorted(allowed))}")


def _node_entry(entry: Any, at: str) -> GpuGroup:
    if not isinstance(entry, dict):
        raise PpplanError(at, shorten(entry), rule='must be an object like {"gpu": "H100", "count": 8}')
    _unknown_keys(entry, _NODE_KEYS, at)
    if "gpu" not in entry or not isinstance(entry["gpu"], str):
        raise PpplanError(f"{at}.gpu", entry.get("gpu"), rule='must name a GPU kind of the catalog, e.g. "H100"')
    gpu = get_gpu(entry["gpu"], field=f"{at}.gpu")
    if "count" not in entry:
        raise PpplanError(f"{at}.count", rule="missing: the GPUs of the node")
    per = _int_field(entry, "count", at)
    nodes = _int_field(entry, "nodes", at, default=1)
    link = entry.get("interconnect", default_interconnect(gpu))
    if link not in INTERCONNECTS:
        raise PpplanError(f"{at}.interconnect", link, rule=f"must be one of {', '.join(INTERCONNECTS)}")
    host = entry.get("host")
    if host is not None and (not isinstance(host, str) or not host.strip()):
        raise PpplanError(f"{at}.host", host, rule="must be a non-empty host name")
    if host is not None and nodes != 1:
        raise PpplanError(f"{at}.host", host, rule=f"names one node; this entry has nodes = {nodes}")
    return GpuGroup(
        gpu=gpu,
        nodes=nodes,
        gpus_per_node=per,
        interconnect=link,
        intra_bw=_gbps_field(entry, "intra_gbps", at),
        hosts=(host.strip(),) if host is not None else (),
    )


def _network(data: Any) -> tuple[str | None, float | None]:
    if data is None:
        return None, None
    if not isinstance(data, dict):
        raise PpplanError("cluster.network", shorten(data), rule='must be an object like {"kind": "ib-400g"}')
    _unknown_keys(data, _NETWORK_KEYS, "cluster.network")
    kind = data.get("kind")
    if kind is not None and (not isinstance(kind, str) or not kind.strip()):
        raise PpplanError("cluster.network.kind", kind, rule="must be a non-empty name such as ib-400g")
    bw = _gbps_field(data, "gbps", "cluster.network")
    if bw is None and kind is not None:
        known = NETWORK_KINDS.get(kind.strip().lower())
        if known is None:
            raise PpplanError(
                "cluster.network.gbps",
                rule=f"missing for network kind {kind!r}; give GB/s per GPU and direction or a kind of "
                f"{', '.join(NETWORK_KINDS)}",
            )
        bw = known
    return (kind.strip() if kind is not None else None), bw


def parse_cluster_file(text: str) -> Cluster:
    """Parse the JSON text of a ``--cluster FILE``.

    Format (node entries in pipeline-host order; identical nodes merge into one group)::

        {"nodes": [{"gpu": "H100", "count": 8, "interconnect": "nvlink", "host": "node-a"},
                   {"gpu": "A100-80GB", "count": 8, "nodes": 2}],
         "network": {"kind": "ib-400g", "gbps": 50}}

    ``count``: GPUs per node; ``nodes``: identical nodes of this entry (default 1); ``interconnect``:
    'nvlink' (default) or 'pcie'; ``intra_gbps``: GB/s per GPU and direction inside the node;
    ``host``: the node's name (one node per entry). ``network.gbps``: GB/s per GPU and direction
    across nodes (a 400 Gb/s NIC per GPU is 50); without it, ``network.kind`` picks a known fabric
    and without a network the catalog's NIC of each kind is used.

    Raises:
        PpplanError: invalid JSON (field ``cluster``), an unknown or missing key, or a bad value,
            naming the key path (``cluster.nodes[1].count``).
    """
    if len(text) > MAX_CLUSTER_FILE:
        raise PpplanError("cluster", rule=f"{len(text):,} characters exceed the maximum of {MAX_CLUSTER_FILE:,}")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PpplanError("cluster", rule=f"is not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise PpplanError("cluster", rule="must be a JSON object with a 'nodes' list")
    check_strings(data, "cluster")
    _unknown_keys(data, _TOP_KEYS, "cluster")
    entries = data.get("nodes")
    if not isinstance(entries, list) or not entries:
        raise PpplanError("cluster.nodes", rule="must be a non-empty list of node objects")
    groups = [_node_entry(e, f"cluster.nodes[{i}]") for i, e in enumerate(entries)]
    total = sum(g.count for g in groups)
    if total > MAX_GPUS:
        raise PpplanError("cluster.nodes", rule=f"{total} GPUs in all exceed the {MAX_GPUS} one plan may cover")
    hosts = [h for g in groups for h in g.hosts]
    if len(set(hosts)) != len(hosts):
        dup = next(h for h in hosts if hosts.count(h) > 1)
        raise PpplanError("cluster.nodes", dup, rule=f"host {dup!r} is listed twice")
    kind, bw = _network(data.get("network"))
    return Cluster(groups=merge_groups(groups), network_bw=bw, network=kind)

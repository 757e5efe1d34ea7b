"""Clusters of one or several GPU kinds: the ``--gpus`` text and the ``--cluster FILE`` JSON.

A cluster is a tuple of :class:`GpuGroup`: nodes of one GPU kind with the same number of GPUs per
node and the same link inside the node. A TP group never spans a group (kinds differ) nor a node;
a pipeline stage boundary between two groups always crosses the network. ``--cluster FILE``
(JSON listing nodes) is parsed by :func:`partitioner.cluster_file.parse_cluster_file`.

``--gpus`` grammar (NFKC-normalised first, as :func:`~partitioner.request.parse_gpus` does)::

    TEXT  := GROUP ("+" GROUP)*
    GROUP := COUNT "x" KIND                   8xH100     (whole nodes of the catalog's size)
           | NODES "x" PER_NODE "x" KIND      2x8xH100

``nodes`` given for the whole text (``--gpus 8xH100+8xA100-80GB --nodes 2``) means that many
equal nodes in all: every node holds ``total / nodes`` GPUs and each group fills whole nodes.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from ppplan.core.errors import PpplanError, shorten
from ppplan.core.gpus import GPUSpec
from ppplan.core.text import check_text
from ppplan.partitioner.request import MAX_GPUS, MAX_GPUS_TEXT, parse_gpus

__all__ = [
    "INTERCONNECTS",
    "MAX_CLUSTER_TEXT",
    "MAX_GROUPS",
    "PCIE_BW",
    "Cluster",
    "GpuGroup",
    "default_interconnect",
    "merge_groups",
    "parse_cluster_gpus",
]

MAX_GROUPS = 16
"""Most GPU groups one cluster may have: the exact mixed-cluster search enumerates their orders."""
MAX_CLUSTER_TEXT = 4 * MAX_GPUS_TEXT
"""Longest ``--gpus`` text of a mixed cluster, characters."""

PCIE_BW = 31.5e9
"""Bytes/s per direction of a PCIe 4.0 x16 link (16 GT/s × 16 lanes × 128/130 encoding, PCI-SIG
PCIe 4.0 base specification): the GPU-to-GPU bandwidth of a node without NVLink."""

INTERCONNECTS = ("nvlink", "pcie", "host")
"""Links inside a node a cluster file may name ('host': CPU ranks over shared memory)."""

_NODES_PREFIX = re.compile(r"^(\d+)\s*[xX×*]\s*(\d+\s*[xX×*].+)$")
_ASCII_COUNT = re.compile(r"[0-9]+", re.ASCII)


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuGroup:
    """Nodes of one GPU kind, each with ``gpus_per_node`` GPUs joined by ``interconnect``."""

    gpu: GPUSpec
    nodes: int
    gpus_per_node: int
    interconnect: str = "nvlink"
    """link between the GPUs of one node: 'nvlink', 'pcie' or 'host' (default: the catalog's, see
    :func:`default_interconnect`)"""
    intra_bw: float | None = None
    """bytes/s per GPU and direction inside a node when the cluster file states it; None: see :attr:`link_bw`"""
    hosts: tuple[str, ...] = ()
    """host name of each node, in order, when the cluster file names them"""

    @property
    def count(self) -> int:
        """GPUs in the group."""
        return self.nodes * self.gpus_per_node

    @property
    def link_bw(self) -> float:
        """Bytes/s per GPU and direction between two GPUs of one node (stated, or NVLink from the
        catalog, or PCIe 4.0 x16 capped by the catalog)."""
        if self.intra_bw is not None:
            return self.intra_bw
        if self.interconnect == "pcie":
            return min(PCIE_BW, self.gpu.nvlink_bw)
        return self.gpu.nvlink_bw

    @property
    def text(self) -> str:
        """``COUNTxNAME`` when the nodes are the catalog's default split, else ``NODESxPER_NODExNAME``."""
        if _default_split(self.count, self.gpu) == (self.nodes, self.gpus_per_node):
            return f"{self.count}x{self.gpu.name}"
        return f"{self.nodes}x{self.gpus_per_node}x{self.gpu.name}"

    def stages(self, tp: int) -> int:
        """Pipeline stages of TP ``tp`` the group can host (TP groups never span nodes)."""
        return self.nodes * (self.gpus_per_node // tp) if tp >= 1 else 0

    def as_json(self) -> dict[str, Any]:
        """The plan's ``cluster.groups[i]`` entry."""
        return {
            "gpu": self.gpu.name,
            "nodes": self.nodes,
            "gpus_per_node": self.gpus_per_node,
            "count": self.count,
            "interconnect": self.interconnect,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Cluster:
    """GPU groups in the order given (a cluster file's node order is the order of its hosts)."""

    groups: tuple[GpuGroup, ...]
    network_bw: float | None = None
    """bytes/s per GPU and direction across nodes when stated; None: the catalog's (see :attr:`inter_bw`)"""
    network: str | None = None
    """the fabric's name as a cluster file gives it (``ib-400g``), else None"""

    @property
    def count(self) -> int:
        """GPUs in the cluster."""
        return sum(g.count for g in self.groups)

    @property
    def nodes(self) -> int:
        """Nodes in the cluster."""
        return sum(g.nodes for g in self.groups)

    @property
    def homogeneous(self) -> bool:
        """True when the cluster has one group (one GPU kind, one node size, one link)."""
        return len(self.groups) == 1

    @property
    def text(self) -> str:
        """Canonical ``--gpus`` spelling: catalog names, groups joined by ``+`` (round-trips through
        :func:`parse_cluster_gpus`)."""
        return "+".join(g.text for g in self.groups)

    @property
    def inter_bw(self) -> float:
        """Bytes/s per GPU and direction across nodes: the stated network, else the slowest NIC of
        the catalog's kinds (a send between two kinds runs at the slower end)."""
        if self.network_bw is not None:
            return self.network_bw
        return min(g.gpu.network_bw for g in self.groups)

    def cross_bw(self, a: int, b: int) -> float:
        """Bytes/s of a send from a node of group ``a`` to a node of group ``b`` (or between two
        nodes of one group when ``a == b``)."""
        if self.network_bw is not None:
            return self.network_bw
        return min(self.groups[a].gpu.network_bw, self.groups[b].gpu.network_bw)

    def groups_json(self) -> list[dict[str, Any]]:
        """The plan's ``cluster.groups``."""
        return [g.as_json() for g in self.groups]


def default_interconnect(gpu: GPUSpec) -> str:
    """The link inside a node of ``gpu`` per the catalog: 'pcie' for PCIe cards, 'host' for the CPU
    pseudo-device, else 'nvlink'."""
    kind = str(getattr(gpu, "interconnect", "nvlink"))
    return next((k for k in INTERCONNECTS if kind.startswith(k)), "nvlink")


def _default_split(count: int, gpu: GPUSpec) -> tuple[int, int] | None:
    """(nodes, GPUs per node) of ``count`` GPUs in whole catalog-size nodes; None when they do not fill them."""
    per = gpu.gpus_per_node
    if count <= per:
        return 1, count
    if count % per == 0:
        return count // per, per
    return None


def _count(digits: str, what: str) -> int:
    if not _ASCII_COUNT.fullmatch(digits):
        raise PpplanError("gpus", rule=f"the {what} {digits!r} must be written in ASCII digits 0-9")
    if len(digits) > 6:
        raise PpplanError("gpus", rule=f"{len(digits)}-digit {what} exceeds the {MAX_GPUS} one plan may cover")
    n = int(digits)
    if n < 1:
        raise PpplanError("gpus", rule=f"the {what} must be at least 1, got {n}")
    return n


def _parse_group(part: str) -> tuple[int | None, int, GPUSpec]:
    """(nodes or None, GPUs, kind) of one ``+`` term."""
    m = _NODES_PREFIX.match(part)
    if m:
        nodes = _count(m.group(1), "node count")
        per, gpu = parse_gpus(m.group(2))
        if nodes * per > MAX_GPUS:
            raise PpplanError("gpus", rule=f"{nodes} × {per} GPUs exceed the {MAX_GPUS} one plan may cover")
        return nodes, nodes * per, gpu
    count, gpu = parse_gpus(part)
    return None, count, gpu


def merge_groups(groups: list[GpuGroup]) -> tuple[GpuGroup, ...]:
    """Groups of the same kind, node size and link merged (in order of first appearance)."""
    out: list[GpuGroup] = []
    for g in groups:
        for i, h in enumerate(out):
            same = (h.gpu.name, h.gpus_per_node, h.interconnect, h.intra_bw) == (
                g.gpu.name,
                g.gpus_per_node,
                g.interconnect,
                g.intra_bw,
            )
            if same:
                if bool(h.hosts) != bool(g.hosts):
                    raise PpplanError(
                        "cluster.nodes",
                        rule=f"name every {g.gpu.name} node with 'host' or none of them (their order "
                        "decides which host runs which stages)",
                    )
                out[i] = GpuGroup(
                    gpu=h.gpu,
                    nodes=h.nodes + g.nodes,
                    gpus_per_node=h.gpus_per_node,
                    interconnect=h.interconnect,
                    intra_bw=h.intra_bw,
                    hosts=h.hosts + g.hosts,
                )
                break
        else:
            out.append(g)
    if len(out) > MAX_GROUPS:
        raise PpplanError("gpus", rule=f"{len(out)} GPU groups exceed the maximum of {MAX_GROUPS}")
    return tuple(out)


def _split_evenly(terms: list[tuple[int | None, int, GPUSpec]], nodes: int) -> list[GpuGroup]:
    total = sum(c for _, c, _ in terms)
    if nodes > total:
        raise PpplanError("nodes", nodes, rule=f"{nodes} nodes cannot hold {total} GPUs (at least one GPU per node)")
    if total % nodes:
        raise PpplanError("nodes", nodes, rule=f"{total} GPUs do not split evenly over {nodes} nodes")
    per = total // nodes
    out = []
    for given, count, gpu in terms:
        if count % per:
            raise PpplanError(
                "nodes",
                nodes,
                rule=f"{nodes} equal nodes hold {per} GPUs each, but the {count} {gpu.name} do not fill whole "
                "nodes (a node holds one GPU kind); write NODESxPER_NODExKIND per group instead",
            )
        if given is not None and given != count // per:
            raise PpplanError(
                "nodes",
                nodes,
                rule=f"{nodes} equal nodes of {per} GPUs give the {count} {gpu.name} {count // per} nodes, "
                f"but the text gives them {given}",
            )
        out.append(GpuGroup(gpu=gpu, nodes=count // per, gpus_per_node=per, interconnect=default_interconnect(gpu)))
    return out


def parse_cluster_gpus(text: str, nodes: int | None = None) -> Cluster:
    """Parse ``--gpus`` (``8xH100``, ``8xH100+8xA100-80GB``, ``2x8xH100+1x8xA100-80GB``).

    Args:
        text: the option's value.
        nodes: ``--nodes`` for the whole cluster: that many equal nodes, each group filling whole
            nodes; None: each group in nodes of its catalog size (or as written ``NODESxPER_NODE``).

    Raises:
        PpplanError: a malformed term (field ``gpus``), a count outside 1..MAX_GPUS in a term or in
            all, an unknown kind, a group that does not fill whole nodes, or ``nodes`` that do not
            split the groups evenly (field ``nodes``).
    """
    if not isinstance(text, str):
        raise PpplanError("gpus", text, rule="must be a string like 8xH100 or 8xH100+8xA100-80GB")
    if len(text) > MAX_CLUSTER_TEXT:
        raise PpplanError("gpus", rule=f"{len(text)} characters exceed the maximum of {MAX_CLUSTER_TEXT}")
    norm = check_text(unicodedata.normalize("NFKC", text).strip(), "gpus")
    parts = [p.strip() for p in norm.split("+")]
    if not norm or any(not p for p in parts):
        raise PpplanError("gpus", rule=f"{shorten(text)} must be terms like 8xH100 joined by '+', none empty")
    if len(parts) > MAX_GROUPS:
        raise PpplanError("gpus", rule=f"{len(parts)} terms exceed the maximum of {MAX_GROUPS} GPU groups")
    terms = [_parse_group(p) for p in parts]
    total = sum(c for _, c, _ in terms)
    if total > MAX_GPUS:
        raise PpplanError("gpus", rule=f"{total} GPUs in all exceed the {MAX_GPUS} one plan may cover")
    if nodes is not None:
        if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
            raise PpplanError("nodes", nodes, rule="must be a positive integer")
        return Cluster(groups=merge_groups(_split_evenly(terms, nodes)))
    groups = []
    for given, count, gpu in terms:
        if given is not None:
            groups.append(
                GpuGroup(gpu=gpu, nodes=given, gpus_per_node=count // given, interconnect=default_interconnect(gpu))
            )
            continue
        split = _default_split(count, gpu)
        if split is None:
            raise PpplanError(
                "gpus",
                rule=f"{count} {gpu.name} do not fill whole {gpu.gpus_per_node}-GPU nodes; write "
                f"NODESxPER_NODExKIND (e.g. {_example(count)}x{gpu.name}) or give --nodes",
            )
        groups.append(GpuGroup(gpu=gpu, nodes=split[0], gpus_per_node=split[1], interconnect=default_interconnect(gpu)))
    return Cluster(groups=merge_groups(groups))


def _example(count: int) -> str:
    n = next(d for d in range(2, count + 1) if count % d == 0)
    return f"{n}x{count // n}"

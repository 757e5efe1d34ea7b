"""Mixed-cluster pipeline placement: the instance, one placement and the one cut evaluator.

:class:`HeteroProblem` is what :func:`partitioner.hetero.solve_hetero` solves: one TP degree, GPU
groups with their own per-layer time and memory vectors and limits, and the sends between stages
(see :mod:`partitioner.hetero` for the model). :func:`evaluate_hetero_cut` costs a given cut on a
given placement; the solver's answer, the engines' even cuts and the tests all go through it, so
the same cut always costs the same, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ppplan.core.costmodel import LinkSettings
from ppplan.core.errors import PpplanError
from ppplan.partitioner.baselines import ENGINE_DEFAULTS
from ppplan.partitioner.cluster import MAX_GROUPS, Cluster
from ppplan.partitioner.problem import MAX_UNITS, MEMORY_REL_TOL, CutEvaluation, stage_bounds

__all__ = [
    "HeteroCut",
    "HeteroProblem",
    "KindVectors",
    "StageGroup",
    "StagePlace",
    "argmin_chain",
    "cluster_problem",
    "cost_matrix",
    "engine_cuts",
    "evaluate_hetero_cut",
    "memory_matrix",
    "neg_headroom",
    "placement",
    "prefix",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class StageGroup:
    """One GPU group's costs at the problem's TP degree; vectors are per decoder layer (embedding
    folded into the first, head into the last, as :class:`partitioner.costs.Costs` does)."""

    name: str
    """catalog name of the GPU kind (reported per stage)"""
    time: tuple[float, ...]
    """busy seconds per layer and micro-batch on this kind"""
    memory: tuple[float, ...]
    """bytes per GPU per layer (weights and KV cache)"""
    memory_limit: float
    """bytes per GPU a stage may hold on this kind"""
    stages_per_node: int
    """TP groups per node: gpus_per_node // tp (0: the group hosts nothing at this TP)"""
    nodes: int = 1
    peak: tuple[float, ...] | None = None
    """transient bytes per layer; a stage needs the largest of its layers'"""
    kv: tuple[float, ...] | None = None
    """bytes of ``memory`` that are KV cache (for the headroom tie-break)"""
    send_intra: float = 0.0
    """seconds of a stage boundary inside one node of the group"""
    send_inter: float = 0.0
    """seconds of a stage boundary between two nodes of the group"""

    @property
    def max_stages(self) -> int:
        """Stages the group can host."""
        return self.nodes * self.stages_per_node

    def send_after(self, q: int) -> float:
        """Seconds of the boundary after the group's stage ``q`` when stage ``q + 1`` is in the group too."""
        return self.send_inter if (q + 1) % self.stages_per_node == 0 else self.send_intra


@dataclass(frozen=True, slots=True, kw_only=True)
class HeteroProblem:
    """Place one pipeline of TP ``tp`` on ``groups``.

    Raises:
        PpplanError: a malformed instance, naming the field (``groups[1].time``, ``send_cross`` …).
    """

    tp: int
    groups: tuple[StageGroup, ...]
    send_cross: tuple[tuple[float, ...], ...]
    """seconds of the boundary from the last stage on group ``a`` to the first on group ``b``: ``[a][b]``"""
    pp: int | None = None
    """pin the number of stages; None: any"""

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def layers(self) -> int:
        """Decoder layers n."""
        return len(self.groups[0].time)


def _check_vec(name: str, vec: Sequence[float] | None, n: int) -> None:
    if vec is None:
        return
    if len(vec) != n:
        raise PpplanError(name, rule=f"has {len(vec)} entries; one per decoder layer ({n}) is required")
    for i, v in enumerate(vec):
        if not math.isfinite(v) or v < 0:
            raise PpplanError(f"{name}[{i}]", v, rule="must be a finite number ≥ 0")


def _check_num(name: str, v: float, positive: bool = False) -> None:
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise PpplanError(name, v, rule=f"must be a finite number {'> 0' if positive else '≥ 0'}")


def _validate(pr: HeteroProblem) -> None:
    if not 1 <= len(pr.groups) <= MAX_GROUPS:
        raise PpplanError("groups", rule=f"needs 1 to {MAX_GROUPS} GPU groups, got {len(pr.groups)}")
    if not isinstance(pr.tp, int) or pr.tp < 1:
        raise PpplanError("tp", pr.tp, rule="must be a positive integer")
    n = len(pr.groups[0].time)
    if not 1 <= n <= MAX_UNITS:
        raise PpplanError("groups[0].time", rule=f"needs 1 to {MAX_UNITS} layers, got {n}")
    for a, g in enumerate(pr.groups):
        at = f"groups[{a}]"
        for name in ("time", "memory", "peak", "kv"):
            _check_vec(f"{at}.{name}", getattr(g, name), n)
        _check_num(f"{at}.memory_limit", g.memory_limit, positive=True)
        _check_num(f"{at}.send_intra", g.send_intra)
        _check_num(f"{at}.send_inter", g.send_inter)
        if g.stages_per_node < 0 or g.nodes < 1:
            raise PpplanError(f"{at}.stages_per_node", g.stages_per_node, rule="needs stages_per_node ≥ 0, nodes ≥ 1")
    k = len(pr.groups)
    if len(pr.send_cross) != k or any(len(row) != k for row in pr.send_cross):
        raise PpplanError("send_cross", rule=f"must be a {k} × {k} matrix (from group, to group)")
    for a, row in enumerate(pr.send_cross):
        for b, v in enumerate(row):
            _check_num(f"send_cross[{a}][{b}]", v)
    cap = min(n, sum(g.max_stages for g in pr.groups))
    if pr.pp is not None and not 1 <= pr.pp <= cap:
        raise PpplanError("pp", pr.pp, rule=f"must be between 1 and {cap} (layers and stage slots of the cluster)")


# ---- one placement and one cut ------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class StagePlace:
    """Where one stage runs."""

    group: int
    gpu: str
    node: int
    """node index inside its group"""
    slot: int
    """TP group inside the node: GPUs slot·tp … (slot+1)·tp − 1 of the node"""


@dataclass(frozen=True, slots=True, kw_only=True)
class HeteroCut(CutEvaluation):
    """A cut on one placement, stage by stage (seconds, bytes): the units are the decoder layers,
    a stage's time is its own layers' time on its group's kind plus its send, its limit its group's."""

    order: tuple[int, ...]
    """groups along the pipeline (those hosting stages)"""
    counts: tuple[int, ...]
    """stages of each group of ``order``"""
    places: tuple[StagePlace, ...]
    stage_sends: tuple[float, ...]

    @property
    def pp(self) -> int:
        """Stages."""
        return len(self.sizes)


def placement(pr: HeteroProblem, order: Sequence[int], counts: Sequence[int]) -> tuple[list[int], list[float]]:
    """Group and outgoing send (seconds) of each stage when groups ``order`` host ``counts`` stages.

    Raises:
        PpplanError: a group twice, an unknown group, or more stages than a group can host.
    """
    if len(order) != len(counts) or len(set(order)) != len(order) or not order:
        raise PpplanError("order", list(order), rule="must list distinct groups, one stage count each")
    groups, sends = [], []
    for pos, (g, c) in enumerate(zip(order, counts, strict=True)):
        if not 0 <= g < len(pr.groups) or not 1 <= c <= pr.groups[g].max_stages:
            raise PpplanError("counts", list(counts), rule=f"group {g} hosts 1 to its stage slots")
        grp = pr.groups[g]
        nxt = order[pos + 1] if pos + 1 < len(order) else None
        for q in range(c):
            groups.append(g)
            if q < c - 1:
                sends.append(grp.send_after(q))
            else:
                sends.append(pr.send_cross[g][nxt] if nxt is not None else 0.0)
    return groups, sends


def evaluate_hetero_cut(
    pr: HeteroProblem, order: Sequence[int], counts: Sequence[int], sizes: Sequence[int]
) -> HeteroCut:
    """Cost of the cut ``sizes`` with groups ``order`` hosting ``counts`` stages.

    Raises:
        PpplanError: ``sizes`` is not a cut into ``sum(counts)`` stages, or the placement is invalid.
    """
    groups, sends = placement(pr, order, counts)
    n = pr.layers
    if len(sizes) != len(groups) or sum(sizes) != n or any(s < 1 for s in sizes):
        raise PpplanError("sizes", list(sizes), rule=f"must be {len(groups)} stage sizes ≥ 1 summing to {n} layers")
    times, mems, limits, places = [], [], [], []
    seen: dict[int, int] = {}
    sums = {g: (prefix(pr.groups[g].time), prefix(pr.groups[g].memory)) for g in order}
    for k, (a, b) in enumerate(stage_bounds(sizes)):
        g = pr.groups[groups[k]]
        pt, pm = sums[groups[k]]
        times.append(float(pt[b + 1] - pt[a]) + sends[k])
        used = float(pm[b + 1] - pm[a])
        mems.append(used + max(g.peak[a : b + 1]) if g.peak is not None else used)
        limits.append(g.memory_limit)
        q = seen.get(groups[k], 0)
        seen[groups[k]] = q + 1
        places.append(StagePlace(group=groups[k], gpu=g.name, node=q // g.stages_per_node, slot=q % g.stages_per_node))
    return HeteroCut(
        order=tuple(order),
        counts=tuple(counts),
        sizes=tuple(sizes),
        places=tuple(places),
        stage_times=tuple(times),
        stage_sends=tuple(sends),
        stage_memory=tuple(mems),
        stage_limits=tuple(limits),
        stage_fits=tuple(m <= lim * (1 + MEMORY_REL_TOL) for m, lim in zip(mems, limits, strict=True)),
        bottleneck=max(times),
    )


def prefix(vec: Sequence[float]) -> np.ndarray:
    """Running totals with a leading 0 (stage sums are differences of these, in the DP too)."""
    return np.concatenate(([0.0], np.cumsum(np.asarray(vec, dtype=np.float64))))


def engine_cuts(pr: HeteroProblem, order: Sequence[int], counts: Sequence[int]) -> dict[str, HeteroCut]:
    """The engines' even cuts (:data:`partitioner.baselines.ENGINE_DEFAULTS`) on the same placement."""
    p = sum(counts)
    return {e: evaluate_hetero_cut(pr, order, counts, f(pr.layers, p)) for e, f in ENGINE_DEFAULTS.items()}


def memory_matrix(g: StageGroup, n: int) -> np.ndarray:
    """M[i, j]: bytes per GPU of layers i..j-1 on ``g``: their memory plus their largest workspace."""
    pm = prefix(g.memory)
    mem = pm[None, :] - pm[:, None]
    if g.peak is not None:
        peak = np.asarray(g.peak, dtype=np.float64)
        a = np.where(np.arange(n)[None, :] >= np.arange(n)[:, None], peak[None, :], -np.inf)
        a = np.maximum.accumulate(a, axis=1)
        pk = np.zeros((n + 1, n + 1))
        pk[:n, 1:] = np.maximum(a, 0.0)
        mem = mem + pk
    return mem


def cost_matrix(g: StageGroup, mem: np.ndarray, n: int) -> np.ndarray:
    """C[i, j]: seconds of layers i..j-1 on ``g``'s kind; inf when i ≥ j or they do not fit (``mem``:
    bytes of the same spans)."""
    pt = prefix(g.time)
    i, j = np.arange(n + 1)[:, None], np.arange(n + 1)[None, :]
    valid = j > i
    ok = valid & (mem <= g.memory_limit * (1 + MEMORY_REL_TOL))
    return np.where(ok, pt[None, :] - pt[:, None], np.inf)


def neg_headroom(g: StageGroup, mem: np.ndarray) -> np.ndarray:
    """-(KV room / KV need) of every stage span on ``g`` (-(limit - memory) in bytes without KV);
    ``mem``: bytes of the spans."""
    if g.kv is None:
        return mem - g.memory_limit
    pk = prefix(g.kv)
    kv = pk[None, :] - pk[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(kv > 0, (g.memory_limit - (mem - kv)) / kv, np.inf)


def argmin_chain(blocks: list[np.ndarray], n: int) -> tuple[float, tuple[int, ...]]:
    """min over cuts of max_k blocks[k][start, end] and the cut (layers per stage)."""
    f = blocks[0][0].copy()
    args = []
    for b in blocks[1:]:
        cand = np.maximum(f[:, None], b)
        rel = np.argmin(cand, axis=0)
        f = cand[rel, np.arange(n + 1)]
        args.append(rel)
    ends, j = [n], n
    for arg in reversed(args):
        j = int(arg[j])
        ends.append(j)
    ends.reverse()
    starts = [0, *ends[:-1]]
    return float(f[n]), tuple(e - s for s, e in zip(starts, ends, strict=True))


@dataclass(frozen=True, slots=True, kw_only=True)
class KindVectors:
    """One GPU kind's per-decoder-layer vectors at a TP degree (see :class:`StageGroup`)."""

    time: tuple[float, ...]
    memory: tuple[float, ...]
    memory_limit: float
    peak: tuple[float, ...] | None = None
    kv: tuple[float, ...] | None = None


def cluster_problem(
    cluster: Cluster,
    tp: int,
    kinds: Mapping[str, KindVectors],
    send_bytes: float,
    *,
    links: LinkSettings | None = None,
    pp: int | None = None,
) -> HeteroProblem:
    """The placement instance of ``cluster`` at TP ``tp``: one :class:`StageGroup` per cluster group
    with its kind's vectors (``kinds`` by catalog name) and its sends of ``send_bytes`` bytes per
    micro-batch: over the node's link (NVLink or PCIe, :attr:`GpuGroup.link_bw`), over the network
    between nodes (:meth:`Cluster.cross_bw`: the stated fabric, else the slower NIC), plus the
    latencies of ``links``.

    Raises:
        PpplanError: a GPU kind of the cluster without vectors (field ``gpus``), or a malformed instance.
    """
    lat = links or LinkSettings()
    groups = []
    for a, g in enumerate(cluster.groups):
        v = kinds.get(g.gpu.name)
        if v is None:
            raise PpplanError("gpus", g.gpu.name, rule="has no cost vectors (a GPU kind the planner did not cost)")
        groups.append(
            StageGroup(
                name=g.gpu.name,
                time=v.time,
                memory=v.memory,
                memory_limit=v.memory_limit,
                peak=v.peak,
                kv=v.kv,
                stages_per_node=g.gpus_per_node // tp,
                nodes=g.nodes,
                send_intra=send_bytes / g.link_bw + lat.p2p_intra_latency_s,
                send_inter=send_bytes / cluster.cross_bw(a, a) + lat.p2p_inter_latency_s,
            )
        )
    k = len(groups)
    cross = tuple(
        tuple(send_bytes / cluster.cross_bw(a, b) + lat.p2p_inter_latency_s for b in range(k)) for a in range(k)
    )
    return HeteroProblem(tp=tp, groups=tuple(groups), send_cross=cross, pp=pp)

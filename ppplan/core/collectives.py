"""Collective and point-to-point times as measured, size-dependent curves per GPU kind (pure numpy).

Curves come from ``ppplan/core/data/collectives.json`` (the file names its source: NCCL and the
engines' custom all-reduce measured on each GPU kind's reference node, CUDA-graph and eager). A time
between two measured sizes is interpolated in log(bytes) × log(seconds); above the largest size the
last measured bandwidth continues; below the smallest the smallest size's time holds (latency bound).
GPU kinds without curves use the latency + bandwidth formula of :class:`ppplan.core.costmodel.LinkSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from ppplan.core.gpus import core_data

__all__ = ["Collectives", "collectives_for"]

Curve = tuple[np.ndarray, np.ndarray]


def _curve(points: list[list[float]]) -> Curve:
    arr = np.asarray(points, dtype=float)
    return np.log(arr[:, 0]), np.log(arr[:, 1])


def _eval(curve: Curve, nbytes: Any) -> Any:
    lb, lt = curve
    x = np.log(np.maximum(np.asarray(nbytes, dtype=float), 1.0))
    inside = np.exp(np.interp(x, lb, lt))
    # beyond the table: the last segment's bandwidth, linear in bytes
    b1, b2, t1, t2 = np.exp(lb[-2]), np.exp(lb[-1]), np.exp(lt[-2]), np.exp(lt[-1])
    slope = (t2 - t1) / (b2 - b1)
    beyond = t2 + (np.exp(x) - b2) * slope
    return np.where(x > lb[-1], beyond, inside)


@dataclass(frozen=True, slots=True)
class Collectives:
    """Measured curves of one GPU kind: NCCL ops and one engine's custom all-reduce."""

    gpu: str
    nccl: dict[str, dict[int, Curve]]
    custom: dict[str, dict[int, Curve]]
    """custom all-reduce per mode ('graph', 'eager'); empty when the engine has none"""
    source: str

    @staticmethod
    def _pick(curves: dict[int, Curve], gpus: int) -> Curve | None:
        if not curves:
            return None
        if gpus in curves:
            return curves[gpus]
        below = [g for g in curves if g <= gpus]
        return curves[max(below)] if below else curves[min(curves)]

    def op_time(self, op: str, gpus: int, nbytes: Any) -> Any:
        """Seconds of NCCL ``op`` ('all_reduce', 'all_gather', 'reduce_scatter', 'alltoall') of
        ``nbytes`` (the message: the reduced buffer, or the gathered output) over ``gpus`` GPUs."""
        curve = self._pick(self.nccl.get(op, {}), gpus)
        if curve is None:
            raise KeyError(op)
        return _eval(curve, nbytes)

    def allreduce_time(self, gpus: int, nbytes: Any, *, cuda_graphs: bool) -> Any:
        """Seconds of one TP all-reduce: the faster of NCCL and the engine's custom all-reduce (engines
        switch to NCCL above the custom kernel's size limit, so the faster one is the one they run)."""
        nccl = self.op_time("all_reduce", gpus, nbytes)
        custom = self._pick(self.custom.get("graph" if cuda_graphs else "eager", {}), gpus)
        return nccl if custom is None else np.minimum(nccl, _eval(custom, nbytes))

    def p2p_time(self, nbytes: Any) -> Any:
        """Seconds of one point-to-point send of ``nbytes`` inside a node: a 2-GPU all-gather of
        ``2 · nbytes`` moves exactly ``nbytes`` each way."""
        return self.op_time("all_gather", 2, 2.0 * np.asarray(nbytes, dtype=float))


@cache
def _data() -> dict[str, Any]:
    return core_data("collectives.json")


def collectives_for(gpu: str, engine: str | None) -> Collectives | None:
    """The measured curves of ``gpu`` (catalog name) with ``engine``'s custom all-reduce (default:
    vLLM's), or None when the GPU kind has none."""
    data = _data()
    entry = data["gpus"].get(gpu) or data["gpus"].get(data.get("same_silicon", {}).get(gpu, ""))
    if entry is None or not entry.get("nccl"):
        return None
    nccl = {op: {int(g): _curve(p) for g, p in per.items()} for op, per in entry["nccl"].items()}
    engines = entry.get("custom_allreduce", {})
    mine = engines.get(engine or "vllm", {})
    custom = {mode: {int(g): _curve(p) for g, p in per.items()} for mode, per in mine.items()}
    return Collectives(gpu=gpu, nccl=nccl, custom=custom, source=f"{data['source']} [{entry['table']}]")

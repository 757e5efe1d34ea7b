"""The measuring device (CPU or one CUDA GPU, with its catalog entry) and the timer that runs on it.

Timing runs after ``WARMUP_STEPS_*`` untimed steps: CUDA events and ``torch.cuda.synchronize()`` on
GPU, ``time.perf_counter`` on CPU; the median and the interquartile range of the timed steps are
kept. The transient peak comes from ``torch.cuda.max_memory_allocated`` deltas (GPU) or an
:class:`~ppplan.profiler.measure.alloc.AllocTracker` count (CPU).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ppplan.core.gpus import GPUSpec, get_gpu, list_gpus
from ppplan.profiler.measure.alloc import AllocTracker
from ppplan.profiler.measure.errors import MeasureError

__all__ = [
    "MIN_TIMED_STEPS",
    "SLOW_FORWARD_S",
    "TIMED_STEPS_CPU",
    "TIMED_STEPS_CUDA",
    "WARMUP_STEPS_CPU",
    "WARMUP_STEPS_CUDA",
    "Device",
    "Timer",
    "Timing",
    "free_bytes",
    "host_available_bytes",
    "resolve_cuda_gpu",
    "resolve_device",
]

#: untimed steps before the timed ones (allocator, kernel selection, caches)
WARMUP_STEPS_CUDA = 3
WARMUP_STEPS_CPU = 1
#: timed steps per grid point; the median and the interquartile range are kept
TIMED_STEPS_CUDA = 10
TIMED_STEPS_CPU = 5
#: fewest timed steps when one forward is slow (a budget-bound run keeps at least this many)
MIN_TIMED_STEPS = 3
#: a forward slower than this (seconds) uses MIN_TIMED_STEPS
SLOW_FORWARD_S = 0.5
#: untimed steps on a side stream before a CUDA-graph capture (allocator and library warm-up)
GRAPH_WARMUP_STEPS = 2


def _alnum(s: str) -> str:
    return "".join(c for c in s.upper() if c.isalnum())


def resolve_cuda_gpu(device_name: str, catalog: list[GPUSpec] | None = None) -> GPUSpec:
    """The catalog GPU a CUDA device name stands for (``NVIDIA H100 80GB HBM3`` → ``H100-SXM-80GB``).

    The longest catalog name or alias contained in the device name wins, so ``H100 PCIe`` picks a
    PCIe entry over the plain ``H100`` alias when the catalog has one.

    Raises:
        MeasureError: no catalog entry matches; the message asks for ``--gpu``.
    """
    key = _alnum(device_name)
    best: GPUSpec | None = None
    best_len = 0
    for g in catalog or list_gpus():
        if g.name == "CPU":
            continue
        for cand in (g.name, *g.aliases):
            c = _alnum(cand)
            if c and c in key and (best is None or len(c) > best_len):
                best, best_len = g, len(c)
    if best is None:
        known = ", ".join(g.name for g in (catalog or list_gpus()))
        raise MeasureError(
            "gpu",
            device_name,
            rule=f"CUDA device {device_name!r} matches no catalog GPU; pass --gpu with one of {known}",
        )
    return best


@dataclass(frozen=True, slots=True, kw_only=True)
class Device:
    """Where units are measured and which catalog GPU kind the measurement stands for."""

    torch_device: torch.device
    catalog: GPUSpec
    name: str
    """the device's own name (``NVIDIA H100 80GB HBM3``, the CPU's processor name)"""
    cuda: bool

    def sync(self) -> None:
        """Wait for the device's queued work (a no-op on CPU)."""
        if self.cuda:
            torch.cuda.synchronize(self.torch_device)


def _cpu_device(gpu: str | None) -> Device:
    if gpu is not None and get_gpu(gpu).name != "CPU":
        raise MeasureError(
            "gpu",
            gpu,
            rule=f"{gpu!r} cannot label a CPU measurement; a CPU profile is always for the "
            "catalog's 'CPU' pseudo-device (drop --gpu or measure with --device cuda)",
        )
    return Device(
        torch_device=torch.device("cpu"),
        catalog=get_gpu("CPU"),
        name=platform.processor() or platform.machine() or "cpu",
        cuda=False,
    )


def _cuda_device(device: str, gpu: str | None) -> Device:
    if not torch.cuda.is_available():
        raise MeasureError(
            "device",
            device,
            rule=f"{device!r} requested but torch {torch.__version__} sees no CUDA GPU "
            "(use --device cpu, or run on a machine with a GPU)",
        )
    try:
        tdev = torch.device(device.strip().lower())
        idx = tdev.index if tdev.index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(idx)
    except (RuntimeError, AssertionError) as exc:
        raise MeasureError("device", device, rule=f"{device!r} is not a usable CUDA device ({exc})") from None
    cat = get_gpu(gpu) if gpu is not None else resolve_cuda_gpu(name)
    return Device(torch_device=torch.device("cuda", idx), catalog=cat, name=name, cuda=True)


def resolve_device(device: str, gpu: str | None) -> Device:
    """The device ``--device`` names (``cpu``, ``cuda`` or ``cuda:N``), labelled with catalog kind ``gpu``.

    Raises:
        MeasureError: an unknown device, CUDA without a GPU, or a GPU kind for a CPU measurement.
    """
    d = (device or "").strip().lower()
    if d == "cpu":
        return _cpu_device(gpu)
    if d == "cuda" or d.startswith("cuda:"):
        return _cuda_device(device, gpu)
    raise MeasureError("device", device, rule=f"{device!r} is not 'cpu', 'cuda' or 'cuda:N'")


def free_bytes(dev: Device) -> int:
    """Memory free for the measurement on ``dev``, bytes (the GPU's free memory, or the host's)."""
    if dev.cuda:
        free, _ = torch.cuda.mem_get_info(dev.torch_device)
        return int(free)
    return host_available_bytes()


def host_available_bytes() -> int:
    """Host memory available to a new allocation, bytes (Linux MemAvailable; free pages elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _iqr(xs: list[float]) -> float:
    if len(xs) < 4:
        return max(xs) - min(xs)
    q = statistics.quantiles(xs, n=4)
    return q[2] - q[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    """What timing one grid point gave."""

    median_s: float
    """median of the timed steps, seconds"""
    spread_s: float
    """interquartile range of the timed steps (max − min below four steps), seconds"""
    peak_bytes: int | None
    """transient memory of one step above what was allocated before it, bytes"""
    graph: bool = False
    """the timed steps replayed a captured CUDA graph (as engines replay decode)"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Timer:
    """Runs a step ``warmup`` times untimed, then ``timed`` times timed, on ``dev``."""

    dev: Device
    warmup: int
    timed: int
    graphs: bool = False
    """capture graph-eligible steps (decode) in a CUDA graph and time its replay; CUDA only"""
    graph_fallbacks: list[str] = field(default_factory=list)
    """why a capture failed, per step timed eagerly instead (the profile says so)"""

    def run(self, step: Callable[[], Any], reset: Callable[[], None] | None = None, *, graph: bool = False) -> Timing:
        """Time ``step``; ``reset`` runs before each step, untimed.

        One untimed forward first reads the peak memory (the tracker on CPU, the allocator's
        counters on GPU); a step slower than ``SLOW_FORWARD_S`` cuts the timed steps to
        ``MIN_TIMED_STEPS``. With ``graph`` (and :attr:`graphs` on a CUDA device) the step is
        captured once in a CUDA graph and the graph's replay is what is timed, as engines replay
        decode; a step that cannot be captured is timed eagerly and noted in :attr:`graph_fallbacks`.
        """
        if reset:
            reset()
        t0 = time.perf_counter()
        peak = self._peak_of(step)
        replayed = False
        if graph and self.graphs and self.dev.cuda:
            captured = self._capture(step, reset)
            if captured is not None:
                step, replayed = captured, True
        first = time.perf_counter() - t0
        for _ in range(self.warmup):
            if reset:
                reset()
            t0 = time.perf_counter()
            step()
            self.dev.sync()
            first = time.perf_counter() - t0
        steps = min(self.timed, MIN_TIMED_STEPS) if first > SLOW_FORWARD_S else self.timed
        times: list[float] = []
        for _ in range(steps):
            if reset:
                reset()
            times.append(self._timed_step(step))
        return Timing(median_s=statistics.median(times), spread_s=_iqr(times), peak_bytes=peak, graph=replayed)

    def _capture(self, step: Callable[[], Any], reset: Callable[[], None] | None) -> Callable[[], Any] | None:
        """``step`` captured in a CUDA graph (its replay), or None when it cannot be captured."""
        try:
            side = torch.cuda.Stream(device=self.dev.torch_device)
            side.wait_stream(torch.cuda.current_stream(self.dev.torch_device))
            with torch.cuda.stream(side):  # warm-up on a side stream, as torch's capture recipe asks
                for _ in range(GRAPH_WARMUP_STEPS):
                    if reset:
                        reset()
                    step()
            torch.cuda.current_stream(self.dev.torch_device).wait_stream(side)
            g = torch.cuda.CUDAGraph()
            if reset:
                reset()
            with torch.cuda.graph(g):
                step()
            self.dev.sync()
        except RuntimeError as exc:  # a step with host syncs or dynamic allocations cannot be captured
            self.graph_fallbacks.append(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
            return None
        return g.replay

    def _peak_of(self, step: Callable[[], Any]) -> int:
        dev = self.dev
        if dev.cuda:
            dev.sync()
            torch.cuda.reset_peak_memory_stats(dev.torch_device)
            base = torch.cuda.memory_allocated(dev.torch_device)
            out = step()
            dev.sync()
            del out
            return max(0, torch.cuda.max_memory_allocated(dev.torch_device) - base)
        with AllocTracker() as tr:
            out = step()
        del out
        return tr.peak

    def _timed_step(self, step: Callable[[], Any]) -> float:
        if self.dev.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        step()
        return time.perf_counter() - t0

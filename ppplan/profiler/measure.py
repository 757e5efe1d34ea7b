"""Measured profile: time, KV, activation, weight and peak bytes of every planning unit with torch.

The model is built on the meta device (:mod:`profiler.models`); one planning unit at a time is
materialised on the measuring device with random weights (fixed seed), measured, and sent back to
meta, so a 405B or 671B architecture profiles on one GPU. Units with the same ``signature`` (class,
parameter shapes, attention kind) are measured once and their numbers reused: a homogeneous
80-layer model costs one decoder layer's measurement.

Per distinct unit and grid point:

* prefill: one sequence of ``tokens`` tokens through the unit with an empty cache;
* decode: ``batch`` sequences of one new token each over a KV cache already filled with ``context``
  tokens (filled by a real prefill of one sequence, replicated over the batch), because attention
  cost grows with the context.

Timing runs under ``torch.inference_mode()`` after ``WARMUP_STEPS`` untimed steps: CUDA events and
``torch.cuda.synchronize()`` on GPU, ``time.perf_counter`` on CPU; the median and the interquartile
range of the timed steps are kept. KV bytes per token are read from the real transformers cache
object after a forward; weight bytes from the materialised parameters; the transient peak from
``torch.cuda.max_memory_allocated`` deltas (GPU) or a dispatch-mode count of the tensors the forward
allocates and frees (CPU).

Everything here imports torch; :func:`run_profile_cli` is what ``ppplan profile --device`` calls.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import inspect
import math
import os
import platform
import statistics
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ppplan.core.dtypes import element_bytes
from ppplan.core.errors import PpplanError
from ppplan.core.gpus import GPUSpec, get_gpu, list_gpus
from ppplan.core.profile import MeasuredPoint, Profile, UnitCost
from ppplan.core.spec import ModelSpec
from ppplan.profiler.analytic import COST_MODEL_VERSION, SPEC_VERSION, analytic_profile, model_spec
from ppplan.profiler.configs import ModelConfig, load_model_config
from ppplan.profiler.hf_compat import cache_kwargs

__all__ = [
    "CPU_GRIDS",
    "CUDA_GRIDS",
    "GRID_ENV",
    "SEED",
    "MeasureError",
    "ProfileGrid",
    "UnitMeasurement",
    "parse_grid",
    "resolve_cuda_gpu",
    "run_profile",
    "run_profile_cli",
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
#: tokens of the forward that reads the KV bytes per token off the cache (below any sliding window)
KV_PROBE_TOKENS = 8
#: seed of the random weights and token ids
SEED = 0
#: standard deviation of the random matrix weights (as an initialiser would; values do not matter
#: for time, only that they are finite and route MoE tokens about evenly)
INIT_STD = 0.02
#: share of the free device memory one grid point may plan to use
MEMORY_HEADROOM = 0.85
#: environment variable overriding the grid: "prefill=16,64;batch=1,4;context=64,256"
GRID_ENV = "PPPLAN_PROFILE_GRID"

_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
GIB = 1024**3


class MeasureError(PpplanError):
    """A measurement that cannot run: unknown device, no CUDA, a grid too large for memory."""


@dataclass(kw_only=True, slots=True)
class ProfileGrid:
    """The points a unit is measured at (all token counts, > 0, ascending)."""

    prefill_tokens: tuple[int, ...]
    """prompt lengths of one sequence for prefill, tokens"""
    decode_batches: tuple[int, ...]
    """sequences per decode step (one new token each)"""
    decode_contexts: tuple[int, ...]
    """tokens already in the KV cache of every sequence during decode"""

    def __post_init__(self) -> None:
        for name in ("prefill_tokens", "decode_batches", "decode_contexts"):
            vals = tuple(getattr(self, name))
            if not vals:
                raise MeasureError(f"grid.{name}", rule="needs at least one value, got none")
            bad = [v for v in vals if not isinstance(v, int) or isinstance(v, bool) or v <= 0]
            if bad:
                raise MeasureError(f"grid.{name}", bad[0], rule="every value must be a positive integer")
            object.__setattr__(self, name, tuple(sorted(set(vals))))

    @property
    def points(self) -> int:
        """Grid points per unit (prefill + decode)."""
        return len(self.prefill_tokens) + len(self.decode_batches) * len(self.decode_contexts)

    def describe(self) -> str:
        """``prefill 16,64 · decode batch 1,4 × context 64,256``."""
        j = lambda xs: ",".join(map(str, xs))  # noqa: E731
        return (
            f"prefill {j(self.prefill_tokens)} · decode batch {j(self.decode_batches)} × "
            f"context {j(self.decode_contexts)}"
        )


#: CUDA grids, finest first; a budget picks the finest that fits (prompt lengths 128…8192,
#: batches 1…256 at several contexts, as vLLM's and vidur's profilers span)
CUDA_GRIDS: tuple[ProfileGrid, ...] = (
    ProfileGrid(
        prefill_tokens=(128, 512, 2048, 8192), decode_batches=(1, 8, 32, 128, 256), decode_contexts=(512, 2048, 8192)
    ),
    # the same without the longest prompt (MLA's math-path scores at 8192 tokens outgrow an 80 GB GPU)
    ProfileGrid(
        prefill_tokens=(128, 512, 2048, 4096), decode_batches=(1, 8, 32, 128, 256), decode_contexts=(512, 2048, 8192)
    ),
    ProfileGrid(prefill_tokens=(128, 1024, 8192), decode_batches=(1, 16, 256), decode_contexts=(1024, 8192)),
    ProfileGrid(prefill_tokens=(128, 2048), decode_batches=(1, 64), decode_contexts=(2048,)),
)
#: CPU grids, finest first: tiny, because a CPU runs an 8B model's layer in tens of milliseconds
CPU_GRIDS: tuple[ProfileGrid, ...] = (
    ProfileGrid(prefill_tokens=(16, 64), decode_batches=(1, 4), decode_contexts=(64, 256)),
    ProfileGrid(prefill_tokens=(16, 64), decode_batches=(1, 4), decode_contexts=(64,)),
    ProfileGrid(prefill_tokens=(16,), decode_batches=(1,), decode_contexts=(64,)),
)


def parse_grid(text: str) -> ProfileGrid:
    """Parse ``"prefill=16,64;batch=1,4;context=64,256"`` (the ``PPPLAN_PROFILE_GRID`` format).

    Raises:
        MeasureError: an unknown key, a missing key or a value that is not a positive integer.
    """
    keys = {"prefill": "prefill_tokens", "batch": "decode_batches", "context": "decode_contexts"}
    vals: dict[str, tuple[int, ...]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        k, sep, v = part.partition("=")
        k = k.strip()
        if not sep or k not in keys:
            raise MeasureError("grid", rule=f"{part!r} is not one of prefill=…, batch=…, context=… (in {text!r})")
        try:
            vals[keys[k]] = tuple(int(x) for x in v.split(",") if x.strip())
        except ValueError:
            raise MeasureError(f"grid.{keys[k]}", v, rule="is not a comma-separated list of integers") from None
    missing = [k for k, f in keys.items() if f not in vals]
    if missing:
        raise MeasureError(
            "grid", rule=f"{text!r} lacks {', '.join(missing)} (format prefill=16,64;batch=1,4;context=64)"
        )
    return ProfileGrid(**vals)


# ---- devices --------------------------------------------------------------------------------------
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
    best: tuple[int, GPUSpec] | None = None
    for g in catalog or list_gpus():
        if g.name == "CPU":
            continue
        for cand in (g.name, *g.aliases):
            c = _alnum(cand)
            if c and c in key and (best is None or len(c) > best[0]):
                best = (len(c), g)
    if best is None:
        known = ", ".join(g.name for g in (catalog or list_gpus()))
        raise MeasureError(
            "gpu", rule=f"CUDA device {device_name!r} matches no catalog GPU; pass --gpu with one of {known}"
        )
    return best[1]


@dataclass(kw_only=True, slots=True)
class _Device:
    torch_device: torch.device
    catalog: GPUSpec
    name: str
    cuda: bool

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.torch_device)


def _resolve_device(device: str, gpu: str | None) -> _Device:
    d = (device or "").strip().lower()
    if d == "cpu":
        if gpu is not None and get_gpu(gpu).name != "CPU":
            raise MeasureError(
                "gpu",
                rule=f"{gpu!r} cannot label a CPU measurement; a CPU profile is always for the "
                "catalog's 'CPU' pseudo-device (drop --gpu or measure with --device cuda)",
            )
        return _Device(
            torch_device=torch.device("cpu"),
            catalog=get_gpu("CPU"),
            name=platform.processor() or platform.machine() or "cpu",
            cuda=False,
        )
    if d == "cuda" or d.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise MeasureError(
                "device",
                rule=f"{device!r} requested but torch {torch.__version__} sees no CUDA GPU "
                "(use --device cpu, or run on a machine with a GPU)",
            )
        try:
            tdev = torch.device(d)
            idx = tdev.index if tdev.index is not None else torch.cuda.current_device()
            name = torch.cuda.get_device_name(idx)
        except (RuntimeError, AssertionError) as exc:
            raise MeasureError("device", rule=f"{device!r} is not a usable CUDA device ({exc})") from None
        cat = get_gpu(gpu) if gpu is not None else resolve_cuda_gpu(name)
        return _Device(torch_device=torch.device("cuda", idx), catalog=cat, name=name, cuda=True)
    raise MeasureError("device", rule=f"{device!r} is not 'cpu', 'cuda' or 'cuda:N'")


def _free_bytes(dev: _Device) -> int:
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


# ---- memory accounting on CPU ---------------------------------------------------------------------
class _AllocTracker(TorchDispatchMode):
    """Counts bytes of tensors the ops under it allocate, minus those freed; keeps the peak.

    An op's output whose storage is one of its inputs' (a view or an in-place op) is no allocation;
    a storage stays counted while any tensor seen here still refers to it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, list[int]] = {}  # storage ptr -> [tensors alive, bytes]

    def _release(self, ptr: int) -> None:
        entry = self._live.get(ptr)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] <= 0:
            self.current -= entry[1]
            del self._live[ptr]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs: set[int] = set()
        for a in torch.utils._pytree.tree_leaves((args, kwargs or {})):
            if isinstance(a, torch.Tensor):
                inputs.add(a.untyped_storage().data_ptr())
        for t in torch.utils._pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            ptr = st.data_ptr()
            entry = self._live.get(ptr)
            if entry is not None:
                entry[0] += 1
            elif ptr in inputs or st.nbytes() == 0:
                continue
            else:
                self._live[ptr] = [1, st.nbytes()]
                self.current += st.nbytes()
                self.peak = max(self.peak, self.current)
            weakref.finalize(t, self._release, ptr)
        return out


# ---- one unit on the device ----------------------------------------------------------------------
@dataclass(kw_only=True, slots=True)
class UnitMeasurement:
    """What was measured for one distinct unit (reused for every unit with its signature)."""

    index: int
    points: list[MeasuredPoint] = field(default_factory=list)
    weight_bytes: int = 0
    act_bytes_per_token: int = 0
    kv_bytes_per_token: int = 0
    kv_layout: str = "none"
    seconds: float = 0.0


def _inplace_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class _InPlaceLayer(DynamicLayer):  # type: ignore[misc,valid-type]
        """A KV-cache layer that writes new tokens into a preallocated buffer, as paged engines do.

        transformers' ``DynamicLayer`` concatenates (copies the whole cache) on every step, which would
        bill decode for a copy no serving engine makes; this layer keeps the cache object's interface
        for full-attention layers and is reset to ``length`` tokens before each timed step.
        """

        is_sliding = False

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
            super().__init__()
            self._k, self._v = keys, values
            self.device = keys.device
            self.is_initialized = True
            self.set_length(length)

        def set_length(self, n: int) -> None:
            self._len = n
            self.keys = self._k[..., :n, :]
            self.values = self._v[..., :n, :]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            end = self._len + key_states.shape[-2]
            if end > self._k.shape[-2]:
                raise RuntimeError(f"in-place KV layer of {self._k.shape[-2]} slots cannot take {end} tokens")
            self._k[..., self._len : end, :].copy_(key_states)
            self._v[..., self._len : end, :].copy_(value_states)
            self.set_length(end)
            return self.keys, self.values

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self._len + query_length, 0

        def get_seq_length(self) -> int:
            return self._len

        def get_max_length(self) -> int:
            return -1

        def offload(self) -> None:  # pragma: no cover - never offloaded
            pass

        def prefetch(self) -> None:  # pragma: no cover - never offloaded
            pass

    return _InPlaceLayer


def _materialise(mods: list[nn.Module], dev: _Device, dtype: torch.dtype) -> None:
    """Give ``mods`` real storage on the device in ``dtype``, random weights from ``SEED``."""
    torch.manual_seed(SEED)
    for m in mods:
        m.to(dtype=dtype)  # free on meta; avoids a float32 copy of a 671B layer on the device
        m.to_empty(device=dev.torch_device)
        for name, p in m.named_parameters():
            with torch.no_grad():
                if p.dim() >= 2:
                    p.normal_(0.0, INIT_STD)
                elif "norm" in name or name.endswith("weight"):
                    p.fill_(1.0)
                else:
                    p.zero_()
        for _, b in m.named_buffers():
            if b.is_floating_point():
                b.zero_()
            else:
                b.fill_(0)


def _release(mods: list[nn.Module]) -> None:
    for m in mods:
        m.to_empty(device="meta")


def _unique_params(mods: list[nn.Module]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for m in mods:
        for p in m.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


def _iqr(xs: list[float]) -> float:
    if len(xs) < 4:
        return max(xs) - min(xs)
    q = statistics.quantiles(xs, n=4)
    return q[2] - q[0]


@dataclass(kw_only=True, slots=True)
class _Timer:
    dev: _Device
    warmup: int
    timed: int

    def run(self, step: Callable[[], Any], reset: Callable[[], None] | None = None) -> tuple[float, float, int | None]:
        """(median s, IQR s, peak transient bytes) of ``step``; ``reset`` runs before each step, untimed."""
        dev = self.dev
        peak: int | None = None
        # peak memory: one untimed forward under the tracker (CPU) or the allocator's counters (GPU)
        if reset:
            reset()
        t0 = time.perf_counter()
        if dev.cuda:
            dev.sync()
            torch.cuda.reset_peak_memory_stats(dev.torch_device)
            base = torch.cuda.memory_allocated(dev.torch_device)
            out = step()
            dev.sync()
            peak = max(0, torch.cuda.max_memory_allocated(dev.torch_device) - base)
        else:
            with _AllocTracker() as tr:
                out = step()
            peak = tr.peak
        first = time.perf_counter() - t0
        del out
        steps = self.timed
        for _ in range(self.warmup):
            if reset:
                reset()
            t0 = time.perf_counter()
            step()
            dev.sync()
            first = time.perf_counter() - t0
        if first > SLOW_FORWARD_S:
            steps = min(steps, MIN_TIMED_STEPS)
        times: list[float] = []
        for _ in range(steps):
            if reset:
                reset()
            if dev.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                step()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
        return statistics.median(times), _iqr(times), peak


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    hs = getattr(out, "last_hidden_state", None)
    if isinstance(hs, torch.Tensor):
        return hs
    raise TypeError(f"unit returned {type(out).__name__}, expected a tensor")


@dataclass(kw_only=True)
class _Ctx:
    """What running units needs besides the unit: the model, its config, rotary embedding, device."""

    spec: ModelSpec
    hf: Any
    model: nn.Module
    dev: _Device
    dtype: torch.dtype
    kv_elem_bytes: float
    timer: _Timer
    rotary: nn.Module | None = None

    def module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def rope_for(self, layer: int) -> Callable[[torch.Tensor, torch.Tensor], Any]:
        """``(h, pos) -> (cos, sin)`` for decoder ``layer``, resolved once outside the timed forward;
        models with one rotary table per layer type (Gemma 3: local and global bases) take the type."""
        rotary = self.rotary
        if rotary is None:
            return lambda h, pos: None
        if "layer_type" in inspect.signature(type(rotary).forward).parameters:
            kind = self.hf.layer_types[layer]
            return lambda h, pos: rotary(h, pos, kind)
        return lambda h, pos: rotary(h, pos)


def _rotary(model: nn.Module, hf: Any, dev: _Device) -> nn.Module | None:
    for name, m in model.named_modules():
        if name.endswith("rotary_emb") and ".layers." not in name:
            with torch.device(dev.torch_device):
                try:
                    return type(m)(config=hf)
                except TypeError:
                    return None
    return None


def _one_layer_config(hf: Any, layer: int) -> Any:
    cfg = copy.copy(hf)
    cfg.num_hidden_layers = 1
    types = getattr(hf, "layer_types", None)
    if types is not None:
        cfg.layer_types = [types[layer]]
    return cfg


def _mask(cfg: Any, h: torch.Tensor, cache: Any, pos: torch.Tensor, sliding: bool) -> Any:
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    fn = create_sliding_window_causal_mask if sliding else create_causal_mask
    return fn(config=cfg, inputs_embeds=h, attention_mask=None, position_ids=pos, **cache_kwargs(fn, cache))


def _measure_decoder(
    ctx: _Ctx, unit: UnitCost, grid: ProfileGrid, points_left: Callable[[], bool], tick: Callable[[float], None]
) -> UnitMeasurement:
    from transformers import DynamicCache

    layer_i = int(unit.layer or 0)
    mod = ctx.module(unit.modules[0])
    cfg1 = _one_layer_config(ctx.hf, layer_i)
    sliding = unit.attention == "sliding"
    attn_mods = [m for m in mod.modules() if hasattr(m, "layer_idx")]
    saved_idx = [m.layer_idx for m in attn_mods]
    dev, hidden = ctx.dev.torch_device, ctx.spec.hidden_size
    meas = UnitMeasurement(index=unit.index)
    gen = torch.Generator(device="cpu").manual_seed(SEED)

    def hidden_states(batch: int, n: int) -> torch.Tensor:
        return torch.randn(batch, n, hidden, generator=gen).to(device=dev, dtype=ctx.dtype)

    rope = ctx.rope_for(layer_i)
    cache_kw = next(iter(cache_kwargs(mod, None)))  # the keyword, resolved outside the timed forward

    def forward(h: torch.Tensor, pos: torch.Tensor, cache: Any, mask: Any) -> torch.Tensor:
        out = mod(
            h,
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            position_embeddings=rope(h, pos),
            **{cache_kw: cache},
        )
        return _first_tensor(out)

    _materialise([mod], ctx.dev, ctx.dtype)
    for m in attn_mods:
        m.layer_idx = 0
    try:
        meas.weight_bytes = sum(p.numel() * p.element_size() for p in _unique_params([mod]))
        # KV bytes per token from the real cache object after a forward
        n_probe = KV_PROBE_TOKENS if not unit.window else max(1, min(KV_PROBE_TOKENS, unit.window - 1))
        cache = DynamicCache(config=cfg1)
        h = hidden_states(1, n_probe)
        pos = torch.arange(n_probe, device=dev).unsqueeze(0)
        out = forward(h, pos, cache, _mask(cfg1, h, cache, pos, sliding))
        meas.act_bytes_per_token = out.numel() * out.element_size() // n_probe
        kv_bytes = 0
        elem = 2
        for lay in cache.layers:
            for t in (lay.keys, lay.values):
                if isinstance(t, torch.Tensor):
                    kv_bytes += t.numel() * t.element_size()
                    elem = t.element_size()
        kv_elems = kv_bytes // elem // n_probe
        meas.kv_bytes_per_token = round(kv_elems * ctx.kv_elem_bytes)
        if meas.kv_bytes_per_token == unit.kv_bytes_per_token:
            meas.kv_layout = "engine" if unit.kv_bytes_per_token != unit.kv_bytes_per_token_hf else "standard"
        elif meas.kv_bytes_per_token == unit.kv_bytes_per_token_hf:
            meas.kv_layout = "hf"
        else:
            meas.kv_layout = "other"
        del cache, out

        # prefill: one sequence, empty cache
        for n in grid.prefill_tokens:
            if not points_left() and meas.points:
                break
            t0 = time.perf_counter()
            h = hidden_states(1, n)
            pos = torch.arange(n, device=dev).unsqueeze(0)
            state: dict[str, Any] = {}

            def reset(h: torch.Tensor = h, pos: torch.Tensor = pos, state: dict[str, Any] = state) -> None:
                state["cache"] = DynamicCache(config=cfg1)
                state["mask"] = _mask(cfg1, h, state["cache"], pos, sliding)

            med, iqr, peak = ctx.timer.run(
                lambda h=h, pos=pos, st=state: forward(h, pos, st["cache"], st["mask"]), reset
            )
            meas.points.append(
                MeasuredPoint(phase="prefill", tokens=n, context=n, time_s=med, spread_s=iqr, peak_bytes=peak)
            )
            tick(time.perf_counter() - t0)
        # decode: a cache filled with `context` tokens (one real prefill, replicated over the batch)
        decode_done = False
        for c in grid.decode_contexts:
            fill = DynamicCache(config=cfg1)
            h = hidden_states(1, c)
            pos = torch.arange(c, device=dev).unsqueeze(0)
            forward(h, pos, fill, _mask(cfg1, h, fill, pos, sliding))
            base = fill.layers[0]
            del h
            for b in grid.decode_batches:
                if not points_left() and decode_done:
                    break
                t0 = time.perf_counter()
                if sliding:
                    keys = base.keys.expand(b, -1, -1, -1).contiguous()
                    values = base.values.expand(b, -1, -1, -1).contiguous()
                    cum = base.cumulative_length
                    cache = DynamicCache(config=cfg1)
                    lay = cache.layers[0]

                    def reset(
                        lay: Any = lay, keys: torch.Tensor = keys, values: torch.Tensor = values, cum: int = cum
                    ) -> None:
                        lay.keys, lay.values, lay.cumulative_length = keys, values, cum
                        lay.is_initialized = True
                        lay.device = keys.device
                        if hasattr(lay, "_sliding_window_tensor"):
                            lay._sliding_window_tensor = lay._sliding_window_tensor.to(keys.device)
                else:
                    shape_k, shape_v = list(base.keys.shape), list(base.values.shape)
                    shape_k[0] = shape_v[0] = b
                    shape_k[-2] = shape_v[-2] = c + 1
                    kbuf = torch.empty(shape_k, device=dev, dtype=base.keys.dtype)
                    vbuf = torch.empty(shape_v, device=dev, dtype=base.values.dtype)
                    kbuf[..., :c, :].copy_(base.keys.expand(b, -1, -1, -1))
                    vbuf[..., :c, :].copy_(base.values.expand(b, -1, -1, -1))
                    cache = DynamicCache(config=cfg1)
                    lay = _inplace_layer_class()(kbuf, vbuf, c)
                    cache.layers[0] = lay

                    def reset(lay: Any = lay, c: int = c) -> None:
                        lay.set_length(c)

                reset()
                h = hidden_states(b, 1)
                pos = torch.full((b, 1), c, device=dev, dtype=torch.long)
                mask = _mask(cfg1, h, cache, pos, sliding)
                med, iqr, peak = ctx.timer.run(
                    lambda h=h, pos=pos, cache=cache, mask=mask: forward(h, pos, cache, mask), reset
                )
                meas.points.append(
                    MeasuredPoint(phase="decode", tokens=b, context=c, time_s=med, spread_s=iqr, peak_bytes=peak)
                )
                decode_done = True
                del cache, lay
                tick(time.perf_counter() - t0)
            del fill, base
    finally:
        for m, i in zip(attn_mods, saved_idx, strict=True):
            m.layer_idx = i
        _release([mod])
    return meas


def _measure_edge(
    ctx: _Ctx, unit: UnitCost, grid: ProfileGrid, points_left: Callable[[], bool], tick: Callable[[float], None]
) -> UnitMeasurement:
    """The embedding (token ids → hidden) or the head (final norm over the tokens, LM head on the
    sampled ones: the last prompt token in prefill, every sequence in decode)."""
    mods = [ctx.module(n) for n in unit.modules]
    dev, hidden, vocab = ctx.dev.torch_device, ctx.spec.hidden_size, ctx.spec.vocab_size
    meas = UnitMeasurement(index=unit.index)
    gen = torch.Generator(device="cpu").manual_seed(SEED)
    _materialise(mods, ctx.dev, ctx.dtype)
    try:
        meas.weight_bytes = sum(p.numel() * p.element_size() for p in _unique_params(mods))
        if unit.kind == "embed":
            emb = mods[0]

            def make(batch: int, n: int) -> Callable[[], torch.Tensor]:
                ids = torch.randint(0, vocab, (batch, n), generator=gen).to(dev)
                return lambda: emb(ids)
        else:
            *norms, lm_head = mods

            def make(batch: int, n: int) -> Callable[[], torch.Tensor]:
                h = torch.randn(batch, n, hidden, generator=gen).to(device=dev, dtype=ctx.dtype)

                def step() -> torch.Tensor:
                    x = h
                    for nm in norms:
                        x = nm(x)
                    last = x[:, -1, :].contiguous()  # the sampled token; a strided row takes a slow GEMM path
                    return lm_head(last).float()  # fp32 logits, as engines keep them

                return step

        out = make(1, KV_PROBE_TOKENS)()
        meas.act_bytes_per_token = out.numel() * out.element_size() // (KV_PROBE_TOKENS if unit.kind == "embed" else 1)
        del out
        shapes = [("prefill", 1, n, n) for n in grid.prefill_tokens]
        shapes += [("decode", b, 1, c) for c in grid.decode_contexts for b in grid.decode_batches]
        seen_phase: set[str] = set()
        for phase, batch, n, c in shapes:
            if not points_left() and phase in seen_phase:
                continue
            t0 = time.perf_counter()
            if phase == "decode" and any(p.phase == "decode" and p.tokens == batch for p in meas.points):
                # the embedding and the head do not read the KV cache: context changes nothing
                prev = next(p for p in meas.points if p.phase == "decode" and p.tokens == batch)
                meas.points.append(prev.model_copy(update={"context": c}))
                continue
            med, iqr, peak = ctx.timer.run(make(batch, n))
            tokens = n if phase == "prefill" else batch
            meas.points.append(
                MeasuredPoint(
                    phase=phase,
                    tokens=tokens,
                    context=c,
                    time_s=med,  # type: ignore[arg-type]
                    spread_s=iqr,
                    peak_bytes=peak,
                )
            )
            seen_phase.add(phase)
            tick(time.perf_counter() - t0)
    finally:
        _release(mods)
    return meas


# ---- planning the run -----------------------------------------------------------------------------
def _point_memory(
    unit: UnitCost, spec: ModelSpec, phase: str, batch: int, tokens: int, context: int, dtype_bytes: int, cuda: bool
) -> int:
    """Bytes one grid point needs on the device: weights, KV, activations, attention scores."""
    kv_bpt = max(unit.kv_bytes_per_token, unit.kv_bytes_per_token_hf) * dtype_bytes // 2
    window = unit.window or math.inf
    hidden = spec.hidden_size
    if unit.kind == "decoder":
        if phase == "decode":
            # the fill prefill of one sequence plus the batch's cache (+1 slot)
            kv = kv_bpt * int(min(context + 1, window)) * (batch + 1)
            act = batch * (unit.workspace_bytes_per_token + 4 * hidden * dtype_bytes)
            scores = batch * max(1, unit.num_kv_heads) * int(min(context + 1, window)) * 4 * 8
            fill = context * (unit.workspace_bytes_per_token + 4 * hidden * dtype_bytes)
            fill_scores = 0 if cuda else 8 * context * int(min(context, window)) * 4
            return unit.weight_bytes + kv + act + scores + fill + fill_scores
        kv = kv_bpt * int(min(tokens, window))
        act = tokens * (unit.workspace_bytes_per_token + 4 * hidden * dtype_bytes)
        # the CPU's sdpa may materialise the score matrix (heads × tokens × keys, fp32); on CUDA the
        # fused kernels do not, except for MLA, whose query/key and value head sizes differ: there
        # sdpa falls back to the math path (fp32 scores and their softmax: 8 bytes a pair; an H100
        # asked for 64 GiB at DeepSeek-V3's 128 heads × 8192²)
        heads = max(1, unit.attn_flops_per_pair_prefill // max(1, 4 * max(1, spec.head_dim)))
        pairs = heads * tokens * int(min(tokens, window))
        scores = (8 * pairs if unit.attention == "mla" else 0) if cuda else 4 * pairs
        return unit.weight_bytes + kv + act + scores
    n = batch * tokens
    if unit.kind == "head":
        return unit.weight_bytes + n * hidden * dtype_bytes * 3 + batch * spec.vocab_size * 6
    return unit.weight_bytes + n * hidden * dtype_bytes * 2


def _check_memory(
    units: list[UnitCost], spec: ModelSpec, grid: ProfileGrid, dev: _Device, dtype_bytes: int, free: int | None = None
) -> None:
    """Raise :class:`MeasureError` naming the largest grid point when it does not fit the device."""
    free = _free_bytes(dev) if free is None else free
    limit = int(free * MEMORY_HEADROOM)
    worst: tuple[int, str] | None = None
    for u in units:
        cases = [("prefill", 1, n, n) for n in grid.prefill_tokens]
        cases += [("decode", b, 1, c) for b in grid.decode_batches for c in grid.decode_contexts]
        for phase, b, n, c in cases:
            need = _point_memory(u, spec, phase, b, n, c, dtype_bytes, dev.cuda)
            if worst is None or need > worst[0]:
                what = f"prefill of {n} tokens" if phase == "prefill" else f"decode batch {b} × context {c}"
                worst = (need, f"unit {u.index} ({u.kind}) at {what}")
    if worst is not None and worst[0] > limit:
        raise MeasureError(
            "grid",
            rule=f"{worst[1]} needs about {worst[0] / GIB:.1f} GiB on {dev.torch_device} but only "
            f"{limit / GIB:.1f} GiB may be used ({MEMORY_HEADROOM:.0%} of {free / GIB:.1f} GiB free); "
            f'use a smaller grid ({GRID_ENV}="prefill=…;batch=…;context=…") or a larger device',
        )


def _grids_that_fit(
    grids: list[ProfileGrid], units: list[UnitCost], spec: ModelSpec, dev: _Device, dtype_bytes: int, free: int
) -> list[ProfileGrid]:
    """The grids (order kept) whose every point fits ``free`` bytes; the coarsest one when none does
    (its memory check then names the point that does not fit)."""
    fits = []
    for g in grids:
        try:
            _check_memory(units, spec, g, dev, dtype_bytes, free)
        except MeasureError:
            continue
        fits.append(g)
    return fits or grids[-1:]


def _estimate_seconds(
    units: list[UnitCost], profile: Profile, grid: ProfileGrid, dev: _Device, warmup: int, timed: int
) -> float:
    """Rough wall time of measuring ``units`` on ``grid``: analytic time per forward on the device's
    catalog entry, never below a per-forward floor (Python dispatch dominates small units)."""
    from ppplan.core.costmodel import CostModel

    cm = CostModel(profile, dev.catalog)
    floor = 2e-4 if dev.cuda else 1.5e-3
    forwards = warmup + timed + 1
    total = 0.0
    idx = [u.index for u in units]
    for n in grid.prefill_tokens:
        t = cm.unit_times(1, "prefill", n, n)
        total += sum(max(float(t[i]), floor) for i in idx) * forwards
    for c in grid.decode_contexts:
        for b in grid.decode_batches:
            t = cm.unit_times(1, "decode", b, c)
            total += sum(max(float(t[i]), floor) for i in idx) * forwards
        tp = cm.unit_times(1, "prefill", c, c)  # the fill
        total += sum(max(float(tp[i]), floor) for i in idx if units[idx.index(i)].kind == "decoder")
    init_bw = 20e9 if dev.cuda else 1.5e9  # random init + dtype conversion, bytes/s
    total += sum(u.weight_bytes for u in units) / init_bw
    return total


# ---- the whole run ----------------------------------------------------------------------------------
def _progress(console: Any | None) -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    if console is None:
        return contextlib.nullcontext(None)
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _measure_all(
    ctx: _Ctx,
    distinct: list[UnitCost],
    chosen: ProfileGrid,
    estimate: float,
    budget_seconds: float | None,
    console: Any | None,
) -> tuple[dict[str, UnitMeasurement], int, float]:
    dev = ctx.dev
    start = time.perf_counter()
    skipped = 0

    def points_left() -> bool:
        return budget_seconds is None or time.perf_counter() - start < budget_seconds

    results: dict[str, UnitMeasurement] = {}
    with _progress(console) as prog, torch.inference_mode():
        task = prog.add_task("profile", total=max(estimate, 1e-3)) if prog is not None else None
        for k, u in enumerate(distinct):
            label = f"unit {u.index} {u.kind} ({k + 1}/{len(distinct)} distinct)"
            if prog is not None:
                prog.update(task, description=label)

            def tick(sec: float) -> None:
                if prog is not None:
                    prog.advance(task, sec)

            t0 = time.perf_counter()
            run = _measure_decoder if u.kind == "decoder" else _measure_edge
            try:
                m = run(ctx, u, chosen, points_left, tick)
            except torch.cuda.OutOfMemoryError as exc:
                raise MeasureError(
                    "grid",
                    rule=f"unit {u.index} ran out of device memory ({str(exc).splitlines()[0]}); "
                    f"use a smaller grid ({GRID_ENV})",
                ) from None
            m.seconds = time.perf_counter() - t0
            skipped += chosen.points - len({(p.phase, p.tokens, p.context) for p in m.points})
            results[u.signature] = m
            if dev.cuda:
                torch.cuda.empty_cache()
        if prog is not None:
            prog.update(task, completed=prog.tasks[0].total, description="profile done")
    elapsed = time.perf_counter() - start
    return results, skipped, elapsed


def run_profile(
    model: str | ModelConfig,
    *,
    device: str = "cpu",
    weight_dtype: str = "bf16",
    kv_dtype: str = "bf16",
    grid: ProfileGrid | None = None,
    budget_seconds: float | None = None,
    gpu: str | None = None,
    cpu_threads: int | None = None,
    console: Any | None = None,
) -> Profile:
    """Measure every distinct planning unit of ``model`` on ``device`` and return a measured Profile.

    Args:
        model: preset name, config path or loaded config.
        device: 'cpu', 'cuda' or 'cuda:N'.
        weight_dtype: 'bf16' or 'fp16' (quantised kernels are not measured here).
        kv_dtype: KV-cache dtype the profile's KV bytes are stated in (the cache is measured in
            elements per token in the compute dtype and converted).
        grid: points to measure; default the finest grid of the device whose estimate fits
            ``budget_seconds`` (or ``PPPLAN_PROFILE_GRID`` when set).
        budget_seconds: bound of the run, seconds: picks a coarser grid when the estimate is over,
            and skips remaining points (each unit keeps at least one prefill and one decode point)
            once spent.
        gpu: catalog GPU kind a CUDA measurement stands for (default: from the device name).
        cpu_threads: torch intra-op threads while measuring on CPU (default: torch's current
            setting); one thread gives steadier numbers on a shared host.
        console: a rich Console for the progress bar (None: silent).

    Returns:
        A schema-v1 Profile, ``kind='measured'``, ``device`` = the catalog name, with the units and
        indices of the analytic profile, measured points per unit and provenance.

    Raises:
        MeasureError: unknown device, CUDA without a GPU, unsupported dtype, grid too large.
    """
    if weight_dtype not in _TORCH_DTYPES:
        raise MeasureError(
            "weight_dtype",
            rule=f"{weight_dtype!r} cannot be measured; measured profiles use "
            f"{' or '.join(_TORCH_DTYPES)} weights (plan quantised weights with an analytic "
            "profile calibrated on this GPU kind: `ppplan calibrate`)",
        )
    if budget_seconds is not None and not (budget_seconds > 0 and math.isfinite(budget_seconds)):
        raise MeasureError("budget_seconds", rule=f"must be a positive number of seconds, got {budget_seconds!r}")
    dev = _resolve_device(device, gpu)
    cfg = model if isinstance(model, ModelConfig) else load_model_config(model)
    spec = model_spec(cfg)
    base = analytic_profile(spec, weight_dtype, kv_dtype)
    dtype = _TORCH_DTYPES[weight_dtype]
    dtype_bytes = int(element_bytes(weight_dtype))
    # distinct units: one representative per signature
    reps: dict[str, UnitCost] = {}
    for u in base.units:
        reps.setdefault(u.signature, u)
    distinct = list(reps.values())
    warmup, timed = (WARMUP_STEPS_CUDA, TIMED_STEPS_CUDA) if dev.cuda else (WARMUP_STEPS_CPU, TIMED_STEPS_CPU)
    env_grid = os.environ.get(GRID_ENV)
    if grid is None and env_grid:
        grid = parse_grid(env_grid)
    candidates = [grid] if grid is not None else list(CUDA_GRIDS if dev.cuda else CPU_GRIDS)
    if len(candidates) > 1:  # a default grid: drop those the device's memory cannot hold
        candidates = _grids_that_fit(candidates, distinct, spec, dev, dtype_bytes, _free_bytes(dev))
    chosen = candidates[-1]
    estimate = 0.0
    for g in candidates:
        estimate = _estimate_seconds(distinct, base, g, dev, warmup, timed)
        if budget_seconds is None or estimate <= budget_seconds:
            chosen = g
            break
        chosen = g
    _check_memory(distinct, spec, chosen, dev, dtype_bytes)

    from ppplan.profiler.models import build_hf_config, build_meta_model

    hf = build_hf_config(cfg)
    meta = build_meta_model(hf)
    ctx = _Ctx(
        spec=spec,
        hf=hf,
        model=meta,
        dev=dev,
        dtype=dtype,
        kv_elem_bytes=element_bytes(kv_dtype),
        timer=_Timer(dev=dev, warmup=warmup, timed=timed),
        rotary=_rotary(meta, hf, dev),
    )
    if dev.cuda:
        torch.cuda.set_device(dev.torch_device)
    if cpu_threads is not None and cpu_threads < 1:
        raise MeasureError("cpu_threads", rule=f"must be at least 1, got {cpu_threads}")
    saved_threads = torch.get_num_threads()
    threads = cpu_threads or saved_threads
    try:
        torch.set_num_threads(threads)
        results, skipped, elapsed = _measure_all(ctx, distinct, chosen, estimate, budget_seconds, console)
    finally:
        torch.set_num_threads(saved_threads)

    units: list[UnitCost] = [u.model_copy(update={"measured": results[u.signature].points}) for u in base.units]
    per_unit = [results[u.signature] for u in base.units]
    prov = dict(base.provenance)
    prov.update(
        {
            "source": "measured",
            "cost_model": COST_MODEL_VERSION,
            "spec_version": SPEC_VERSION,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "device_name": dev.name,
            "torch": torch.__version__,
            "cuda": torch.version.cuda if dev.cuda else None,
            "transformers": _transformers_version(),
            "dtype": weight_dtype,
            "kv_dtype": kv_dtype,
            "attn_implementation": str(getattr(hf, "_attn_implementation", None)),
            "grid": chosen.describe(),
            "grid_prefill_tokens": list(chosen.prefill_tokens),
            "grid_decode_batches": list(chosen.decode_batches),
            "grid_decode_contexts": list(chosen.decode_contexts),
            "warmup_steps": warmup,
            "timed_steps": timed,
            "seed": SEED,
            "cpu_threads": None if dev.cuda else threads,
            "distinct_units": len(distinct),
            "units": len(base.units),
            "points_skipped_for_budget": skipped,
            "budget_seconds": budget_seconds,
            "profile_seconds": round(elapsed, 3),
            "measured_weight_bytes": [m.weight_bytes for m in per_unit],
            "measured_kv_bytes_per_token": [m.kv_bytes_per_token for m in per_unit],
            "measured_act_bytes_per_token": [m.act_bytes_per_token for m in per_unit],
            "kv_layout": ",".join(sorted({m.kv_layout for m in per_unit if m.kv_layout != "none"})) or None,
        }
    )
    return base.model_copy(update={"kind": "measured", "device": dev.catalog.name, "units": units, "provenance": prov})


def _transformers_version() -> str:
    from importlib.metadata import version

    return version("transformers")


def run_profile_cli(
    *,
    model: str,
    device: str,
    weight_dtype: str,
    kv_dtype: str,
    budget_seconds: float | None,
    gpu: str | None,
    console: Any | None,
    grid: str | None = None,
    cpu_threads: int | None = None,
) -> Profile:
    """``ppplan profile MODEL --device …``: :func:`run_profile` with a progress bar and a summary line.

    Raises:
        MeasureError: see :func:`run_profile` (the CLI prints it and exits with status 2).
    """
    prof = run_profile(
        model,
        device=device,
        weight_dtype=weight_dtype,
        kv_dtype=kv_dtype,
        grid=parse_grid(grid) if grid else None,
        budget_seconds=budget_seconds,
        gpu=gpu,
        cpu_threads=cpu_threads,
        console=console,
    )
    if console is not None:
        pv = prof.provenance
        skipped = pv.get("points_skipped_for_budget") or 0
        console.print(
            f"measured {pv['distinct_units']} distinct of {pv['units']} units on {pv['device_name']} "
            f"(catalog {prof.device}, {pv['dtype']}) in {pv['profile_seconds']:.1f} s; grid {pv['grid']}"
            + (f"; {skipped} point(s) skipped to stay within the budget" if skipped else ""),
            highlight=False,
        )
    return prof


def iter_points(profile: Profile) -> Iterator[tuple[int, Literal["prefill", "decode"], int, int, float]]:
    """(unit index, phase, tokens, context, seconds) of every measured point of ``profile``."""
    for u in profile.units:
        for p in u.measured:
            yield u.index, p.phase, p.tokens, p.context, p.time_s

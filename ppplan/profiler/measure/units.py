"""Measuring one planning unit: materialising it on the device, and the embedding and head units.

A unit is materialised on the measuring device with random weights (fixed seed), measured, and sent
back to meta, so a 405B or 671B architecture profiles on one GPU. Decoder layers are measured in
:mod:`ppplan.profiler.measure.decoder`.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ppplan.core.profile import MeasuredPoint, UnitCost
from ppplan.core.spec import ModelSpec
from ppplan.profiler.measure.device import Device, Timer, Timing
from ppplan.profiler.measure.grid import GridPoint, ProfileGrid

__all__ = [
    "INIT_STD",
    "KV_PROBE_TOKENS",
    "SEED",
    "UnitContext",
    "UnitMeasurement",
    "first_tensor",
    "materialise",
    "measure_edge",
    "measured_point",
    "release",
    "rotary_of",
    "weight_bytes",
]

#: tokens of the forward that reads the KV bytes per token off the cache (below any sliding window)
KV_PROBE_TOKENS = 8
#: seed of the random weights and token ids
SEED = 0
#: standard deviation of the random matrix weights (as an initialiser would; values do not matter
#: for time, only that they are finite and route MoE tokens about evenly)
INIT_STD = 0.02


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


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitContext:
    """What running units needs besides the unit: the model, its config, rotary embedding, device."""

    spec: ModelSpec
    hf: Any
    """the transformers config of the model"""
    model: nn.Module
    """the whole model on the meta device"""
    dev: Device
    dtype: torch.dtype
    kv_elem_bytes: float
    """bytes of one KV element in the profile's KV dtype"""
    timer: Timer
    rotary: nn.Module | None = None
    """the model-level rotary embedding on the device (None: the model has none)"""

    def module(self, name: str) -> nn.Module:
        """The submodule ``name`` of the meta model."""
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


def rotary_of(model: nn.Module, hf: Any, dev: Device) -> nn.Module | None:
    """A fresh copy on ``dev`` of ``model``'s model-level rotary embedding (None when it has none)."""
    for name, m in model.named_modules():
        if name.endswith("rotary_emb") and ".layers." not in name:
            with torch.device(dev.torch_device):
                try:
                    return type(m)(config=hf)
                except TypeError:
                    return None
    return None


def materialise(mods: list[nn.Module], dev: Device, dtype: torch.dtype) -> None:
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


def release(mods: list[nn.Module]) -> None:
    """Send ``mods`` back to the meta device (their storage is freed)."""
    for m in mods:
        m.to_empty(device="meta")


def weight_bytes(mods: list[nn.Module]) -> int:
    """Bytes of the parameters of ``mods``, each shared parameter counted once."""
    seen: dict[int, nn.Parameter] = {}
    for m in mods:
        for p in m.parameters():
            seen.setdefault(id(p), p)
    return sum(p.numel() * p.element_size() for p in seen.values())


def first_tensor(out: Any) -> torch.Tensor:
    """The hidden states of a unit's output (a tensor, a tuple led by one, or a model output)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    hs = getattr(out, "last_hidden_state", None)
    if isinstance(hs, torch.Tensor):
        return hs
    raise TypeError(f"unit returned {type(out).__name__}, expected a tensor")


StepFactory = Callable[[int, int], Callable[[], torch.Tensor]]
"""``(batch, tokens) -> step``: a forward of the unit over fresh random inputs of that shape"""


def _embed_steps(ctx: UnitContext, emb: nn.Module, gen: torch.Generator) -> StepFactory:
    def make(batch: int, n: int) -> Callable[[], torch.Tensor]:
        ids = torch.randint(0, ctx.spec.vocab_size, (batch, n), generator=gen).to(ctx.dev.torch_device)
        return lambda: emb(ids)

    return make


def _head_steps(ctx: UnitContext, mods: list[nn.Module], gen: torch.Generator) -> StepFactory:
    *norms, lm_head = mods

    def make(batch: int, n: int) -> Callable[[], torch.Tensor]:
        h = torch.randn(batch, n, ctx.spec.hidden_size, generator=gen).to(device=ctx.dev.torch_device, dtype=ctx.dtype)

        def step() -> torch.Tensor:
            x = h
            for nm in norms:
                x = nm(x)
            last = x[:, -1, :].contiguous()  # the sampled token; a strided row takes a slow GEMM path
            return lm_head(last).float()  # fp32 logits, as engines keep them

        return step

    return make


def _edge_points(
    ctx: UnitContext,
    grid: ProfileGrid,
    make: StepFactory,
    meas: UnitMeasurement,
    points_left: Callable[[], bool],
    tick: Callable[[float], None],
) -> None:
    seen_phase: set[str] = set()
    for pt in grid.prefill_points() + grid.decode_points(by_context=True):
        if not points_left() and pt.phase in seen_phase:
            continue
        t0 = time.perf_counter()
        if pt.phase == "decode" and any(p.phase == "decode" and p.tokens == pt.batch for p in meas.points):
            # the embedding and the head do not read the KV cache: context changes nothing
            prev = next(p for p in meas.points if p.phase == "decode" and p.tokens == pt.batch)
            meas.points.append(prev.model_copy(update={"context": pt.context}))
            continue
        meas.points.append(measured_point(pt, ctx.timer.run(make(pt.batch, pt.tokens))))
        seen_phase.add(pt.phase)
        tick(time.perf_counter() - t0)


def measured_point(pt: GridPoint, timing: Timing) -> MeasuredPoint:
    """The profile's record of grid point ``pt``: ``tokens`` is the prompt length in prefill and the
    batch in decode."""
    return MeasuredPoint(
        phase=pt.phase,
        tokens=pt.tokens if pt.phase == "prefill" else pt.batch,
        context=pt.context,
        time_s=timing.median_s,
        spread_s=timing.spread_s,
        peak_bytes=timing.peak_bytes,
    )


def measure_edge(
    ctx: UnitContext,
    unit: UnitCost,
    grid: ProfileGrid,
    points_left: Callable[[], bool],
    tick: Callable[[float], None],
) -> UnitMeasurement:
    """Measure the embedding (token ids → hidden) or the head (final norm over the tokens, LM head on
    the sampled ones: the last prompt token in prefill, every sequence in decode) on ``grid``.

    Args:
        points_left: False once the time budget is spent (each phase still gets one point).
        tick: called with the seconds each measured point took (progress).
    """
    mods = [ctx.module(n) for n in unit.modules]
    meas = UnitMeasurement(index=unit.index)
    gen = torch.Generator(device="cpu").manual_seed(SEED)
    materialise(mods, ctx.dev, ctx.dtype)
    try:
        meas.weight_bytes = weight_bytes(mods)
        make = _embed_steps(ctx, mods[0], gen) if unit.kind == "embed" else _head_steps(ctx, mods, gen)
        out = make(1, KV_PROBE_TOKENS)()
        meas.act_bytes_per_token = out.numel() * out.element_size() // (KV_PROBE_TOKENS if unit.kind == "embed" else 1)
        del out
        _edge_points(ctx, grid, make, meas, points_left, tick)
    finally:
        release(mods)
    return meas

"""Measuring one decoder layer: its KV bytes per token, prefill points and decode points.

* prefill: one sequence of ``tokens`` tokens through the layer with an empty cache;
* decode: ``batch`` sequences of one new token each over a KV cache already filled with ``context``
  tokens (filled by a real prefill of one sequence, replicated over the batch), because attention
  cost grows with the context. Full-attention layers decode into a preallocated buffer
  (:func:`~ppplan.profiler.hf_compat.in_place_kv_layer`), as paged engines do.

KV bytes per token are read from the real transformers cache object after a probe forward.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ppplan.core.profile import MeasuredPoint, UnitCost
from ppplan.profiler.hf_compat import (
    cache_kwargs,
    causal_mask,
    in_place_kv_layer,
    new_dynamic_cache,
    refill_sliding_layer,
)
from ppplan.profiler.measure.grid import GridPoint, ProfileGrid
from ppplan.profiler.measure.units import (
    KV_PROBE_TOKENS,
    SEED,
    UnitContext,
    UnitMeasurement,
    first_tensor,
    materialise,
    measured_point,
    release,
    weight_bytes,
)

__all__ = ["kv_layout_of", "measure_decoder"]


def _one_layer_config(hf: Any, layer: int) -> Any:
    cfg = copy.copy(hf)
    cfg.num_hidden_layers = 1
    types = getattr(hf, "layer_types", None)
    if types is not None:
        cfg.layer_types = [types[layer]]
    return cfg


@dataclass(frozen=True, slots=True, kw_only=True)
class _Layer:
    """One decoder layer and what calling it needs, resolved once outside the timed forwards."""

    ctx: UnitContext
    module: nn.Module
    config: Any
    """a one-layer copy of the model's transformers config (the layer runs as layer 0)"""
    sliding: bool
    rope: Callable[[torch.Tensor, torch.Tensor], Any]
    cache_keyword: str
    gen: torch.Generator
    """random hidden states, seeded per unit"""

    def hidden_states(self, batch: int, tokens: int) -> torch.Tensor:
        """Random hidden states of ``batch`` sequences of ``tokens`` tokens, on the device."""
        h = torch.randn(batch, tokens, self.ctx.spec.hidden_size, generator=self.gen)
        return h.to(device=self.ctx.dev.torch_device, dtype=self.ctx.dtype)

    def positions(self, tokens: int) -> torch.Tensor:
        """Positions ``0..tokens-1`` of one sequence."""
        return torch.arange(tokens, device=self.ctx.dev.torch_device).unsqueeze(0)

    def new_cache(self) -> Any:
        """An empty transformers cache for the one-layer config."""
        return new_dynamic_cache(self.config)

    def mask(self, h: torch.Tensor, cache: Any, pos: torch.Tensor) -> Any:
        """The attention mask of a forward of ``h`` at ``pos`` over ``cache``."""
        return causal_mask(self.config, h, cache, pos, sliding=self.sliding)

    def forward(self, h: torch.Tensor, pos: torch.Tensor, cache: Any, mask: Any) -> torch.Tensor:
        """The layer's output hidden states; appends to ``cache``."""
        out = self.module(
            h,
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            position_embeddings=self.rope(h, pos),
            **{self.cache_keyword: cache},
        )
        return first_tensor(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class _KvProbe:
    """Bytes a short forward left: activations out of the layer and KV in the cache, per token."""

    act_bytes_per_token: int
    kv_bytes_per_token: int
    """in the profile's KV dtype"""


def _probe_kv(layer: _Layer, unit: UnitCost) -> _KvProbe:
    n_probe = KV_PROBE_TOKENS if not unit.window else max(1, min(KV_PROBE_TOKENS, unit.window - 1))
    cache = layer.new_cache()
    h = layer.hidden_states(1, n_probe)
    pos = layer.positions(n_probe)
    out = layer.forward(h, pos, cache, layer.mask(h, cache, pos))
    kv_bytes = 0
    elem = 2
    for lay in cache.layers:
        for t in (lay.keys, lay.values):
            if isinstance(t, torch.Tensor):
                kv_bytes += t.numel() * t.element_size()
                elem = t.element_size()
    kv_elems = kv_bytes // elem // n_probe
    return _KvProbe(
        act_bytes_per_token=out.numel() * out.element_size() // n_probe,
        kv_bytes_per_token=round(kv_elems * layer.ctx.kv_elem_bytes),
    )


def kv_layout_of(kv_bytes_per_token: int, unit: UnitCost) -> str:
    """Which analytic KV layout the measured bytes per token match: ``engine`` (the engines' layout
    where it differs from transformers'), ``standard`` (both agree), ``hf`` or ``other``."""
    if kv_bytes_per_token == unit.kv_bytes_per_token:
        return "engine" if unit.kv_bytes_per_token != unit.kv_bytes_per_token_hf else "standard"
    if kv_bytes_per_token == unit.kv_bytes_per_token_hf:
        return "hf"
    return "other"


@dataclass(slots=True, kw_only=True)
class _EmptyCache:
    """A prefill's forward over a cache emptied (with its mask rebuilt) before every step."""

    layer: _Layer
    h: torch.Tensor
    pos: torch.Tensor
    cache: Any = None
    mask: Any = None

    def reset(self) -> None:
        self.cache = self.layer.new_cache()
        self.mask = self.layer.mask(self.h, self.cache, self.pos)

    def step(self) -> torch.Tensor:
        return self.layer.forward(self.h, self.pos, self.cache, self.mask)


def _prefill_points(
    layer: _Layer, grid: ProfileGrid, points_left: Callable[[], bool], tick: Callable[[float], None]
) -> list[MeasuredPoint]:
    points: list[MeasuredPoint] = []
    for pt in grid.prefill_points():
        if not points_left() and points:
            break
        t0 = time.perf_counter()
        run = _EmptyCache(layer=layer, h=layer.hidden_states(1, pt.tokens), pos=layer.positions(pt.tokens))
        points.append(measured_point(pt, layer.ctx.timer.run(run.step, run.reset)))
        tick(time.perf_counter() - t0)
    return points


@dataclass(frozen=True, slots=True, kw_only=True)
class _DecodeCache:
    """A batch's cache of ``context`` tokens and how to rewind it to that before each step."""

    cache: Any
    reset: Callable[[], None]


def _sliding_cache(layer: _Layer, base: Any, batch: int) -> _DecodeCache:
    """Sliding layers keep transformers' own layer (it drops what leaves the window)."""
    keys = base.keys.expand(batch, -1, -1, -1).contiguous()
    values = base.values.expand(batch, -1, -1, -1).contiguous()
    cum = base.cumulative_length
    cache = layer.new_cache()
    lay = cache.layers[0]
    return _DecodeCache(cache=cache, reset=lambda: refill_sliding_layer(lay, keys, values, cum))


def _in_place_cache(layer: _Layer, base: Any, batch: int, context: int) -> _DecodeCache:
    """Full-attention layers decode into one more preallocated slot per sequence."""
    shape_k, shape_v = list(base.keys.shape), list(base.values.shape)
    shape_k[0] = shape_v[0] = batch
    shape_k[-2] = shape_v[-2] = context + 1
    dev = layer.ctx.dev.torch_device
    kbuf = torch.empty(shape_k, device=dev, dtype=base.keys.dtype)
    vbuf = torch.empty(shape_v, device=dev, dtype=base.values.dtype)
    kbuf[..., :context, :].copy_(base.keys.expand(batch, -1, -1, -1))
    vbuf[..., :context, :].copy_(base.values.expand(batch, -1, -1, -1))
    cache = layer.new_cache()
    lay = in_place_kv_layer(kbuf, vbuf, context)
    cache.layers[0] = lay
    return _DecodeCache(cache=cache, reset=lambda: lay.set_length(context))


def _decode_point(layer: _Layer, base: Any, pt: GridPoint) -> MeasuredPoint:
    """Time one decode step of ``pt.batch`` sequences over ``pt.context`` cached tokens copied from
    the filled layer ``base``."""
    dc = _sliding_cache(layer, base, pt.batch) if layer.sliding else _in_place_cache(layer, base, pt.batch, pt.context)
    dc.reset()
    h = layer.hidden_states(pt.batch, 1)
    pos = torch.full((pt.batch, 1), pt.context, device=layer.ctx.dev.torch_device, dtype=torch.long)
    mask = layer.mask(h, dc.cache, pos)
    # decode is what engines replay from CUDA graphs: captured when the timer's graphs are on
    step = lambda: layer.forward(h, pos, dc.cache, mask)  # noqa: E731
    return measured_point(pt, layer.ctx.timer.run(step, dc.reset, graph=True))


def _filled_layer(layer: _Layer, context: int) -> Any:
    """The cache layer after a real prefill of one sequence of ``context`` tokens."""
    fill = layer.new_cache()
    h = layer.hidden_states(1, context)
    pos = layer.positions(context)
    layer.forward(h, pos, fill, layer.mask(h, fill, pos))
    return fill.layers[0]


def _decode_points(
    layer: _Layer, grid: ProfileGrid, points_left: Callable[[], bool], tick: Callable[[float], None]
) -> list[MeasuredPoint]:
    points: list[MeasuredPoint] = []
    for c in grid.decode_contexts:
        base = _filled_layer(layer, c)
        for b in grid.decode_batches:
            if not points_left() and points:
                break
            t0 = time.perf_counter()
            points.append(_decode_point(layer, base, GridPoint(phase="decode", batch=b, tokens=1, context=c)))
            tick(time.perf_counter() - t0)
        del base
    return points


def measure_decoder(
    ctx: UnitContext,
    unit: UnitCost,
    grid: ProfileGrid,
    points_left: Callable[[], bool],
    tick: Callable[[float], None],
) -> UnitMeasurement:
    """Measure decoder layer ``unit`` on ``grid`` (see the module doc), as layer 0 of a one-layer model.

    Args:
        points_left: False once the time budget is spent (each phase still gets one point).
        tick: called with the seconds each measured point took (progress).
    """
    layer_i = int(unit.layer or 0)
    mod = ctx.module(unit.modules[0])
    layer = _Layer(
        ctx=ctx,
        module=mod,
        config=_one_layer_config(ctx.hf, layer_i),
        sliding=unit.attention == "sliding",
        rope=ctx.rope_for(layer_i),
        cache_keyword=next(iter(cache_kwargs(mod, None))),
        gen=torch.Generator(device="cpu").manual_seed(SEED),
    )
    # the layer's attention indexes the cache by its layer number; the one-layer cache has only layer 0
    attn_mods: list[Any] = [m for m in mod.modules() if hasattr(m, "layer_idx")]
    saved_idx = [m.layer_idx for m in attn_mods]
    materialise([mod], ctx.dev, ctx.dtype)
    for m in attn_mods:
        m.layer_idx = 0
    try:
        probe = _probe_kv(layer, unit)
        meas = UnitMeasurement(
            index=unit.index,
            weight_bytes=weight_bytes([mod]),
            act_bytes_per_token=probe.act_bytes_per_token,
            kv_bytes_per_token=probe.kv_bytes_per_token,
            kv_layout=kv_layout_of(probe.kv_bytes_per_token, unit),
        )
        meas.points += _prefill_points(layer, grid, points_left, tick)
        meas.points += _decode_points(layer, grid, points_left, tick)
    finally:
        for m, i in zip(attn_mods, saved_idx, strict=True):
            m.layer_idx = i
        release([mod])
    return meas

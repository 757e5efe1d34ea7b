"""Planning a measured run: the memory every grid point needs, which grids fit, how long a grid takes."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ppplan.core.costmodel import CostModel
from ppplan.core.profile import Profile, UnitCost
from ppplan.core.spec import ModelSpec
from ppplan.profiler.measure.device import Device, free_bytes
from ppplan.profiler.measure.errors import MeasureError
from ppplan.profiler.measure.grid import GRID_ENV, GridPoint, ProfileGrid

__all__ = ["MEMORY_HEADROOM", "check_memory", "estimate_seconds", "grids_that_fit", "point_memory"]

#: share of the free device memory one grid point may plan to use
MEMORY_HEADROOM = 0.85
GIB = 1024**3


def _decoder_memory(
    unit: UnitCost, spec: ModelSpec, phase: str, batch: int, tokens: int, context: int, dtype_bytes: int, cuda: bool
) -> int:
    kv_bpt = max(unit.kv_bytes_per_token, unit.kv_bytes_per_token_hf) * dtype_bytes // 2
    window = unit.window or math.inf
    per_token_act = unit.workspace_bytes_per_token + 4 * spec.hidden_size * dtype_bytes
    if phase == "decode":
        # the fill prefill of one sequence plus the batch's cache (+1 slot)
        kv = kv_bpt * int(min(context + 1, window)) * (batch + 1)
        act = batch * per_token_act
        scores = batch * max(1, unit.num_kv_heads) * int(min(context + 1, window)) * 4 * 8
        fill = context * per_token_act
        fill_scores = 0 if cuda else 8 * context * int(min(context, window)) * 4
        return unit.weight_bytes + kv + act + scores + fill + fill_scores
    kv = kv_bpt * int(min(tokens, window))
    act = tokens * per_token_act
    # the CPU's sdpa may materialise the score matrix (heads × tokens × keys, fp32); on CUDA the
    # fused kernels do not, except for MLA, whose query/key and value head sizes differ: there
    # sdpa falls back to the math path (fp32 scores and their softmax: 8 bytes a pair; an H100
    # asked for 64 GiB at DeepSeek-V3's 128 heads × 8192²)
    heads = max(1, unit.attn_flops_per_pair_prefill // max(1, 4 * max(1, spec.head_dim)))
    pairs = heads * tokens * int(min(tokens, window))
    scores = (8 * pairs if unit.attention == "mla" else 0) if cuda else 4 * pairs
    return unit.weight_bytes + kv + act + scores


def point_memory(
    unit: UnitCost, spec: ModelSpec, phase: str, batch: int, tokens: int, context: int, dtype_bytes: int, cuda: bool
) -> int:
    """Bytes one grid point needs on the device: weights, KV, activations, attention scores.

    Args:
        phase: ``prefill`` (one sequence of ``tokens``) or ``decode`` (``batch`` sequences, one new
            token each, over ``context`` cached tokens).
        dtype_bytes: bytes of one weight and activation element.
        cuda: the device is a GPU (fused attention kernels) rather than the CPU.
    """
    if unit.kind == "decoder":
        return _decoder_memory(unit, spec, phase, batch, tokens, context, dtype_bytes, cuda)
    hidden = spec.hidden_size
    n = batch * tokens
    if unit.kind == "head":
        return unit.weight_bytes + n * hidden * dtype_bytes * 3 + batch * spec.vocab_size * 6
    return unit.weight_bytes + n * hidden * dtype_bytes * 2


@dataclass(frozen=True, slots=True, kw_only=True)
class _Need:
    """The memory one unit needs at one grid point."""

    bytes: int
    what: str
    """``unit 3 (decoder) at prefill of 64 tokens``"""


def check_memory(
    units: list[UnitCost], spec: ModelSpec, grid: ProfileGrid, dev: Device, dtype_bytes: int, free: int | None = None
) -> None:
    """Check that every point of ``grid`` fits ``MEMORY_HEADROOM`` of ``free`` bytes (default: what
    the device has free now).

    Raises:
        MeasureError: naming the largest grid point when it does not fit the device.
    """
    free = free_bytes(dev) if free is None else free
    limit = int(free * MEMORY_HEADROOM)
    worst: _Need | None = None
    for u in units:
        for pt in grid.prefill_points() + grid.decode_points(by_context=False):
            need = point_memory(u, spec, pt.phase, pt.batch, pt.tokens, pt.context, dtype_bytes, dev.cuda)
            if worst is None or need > worst.bytes:
                worst = _Need(bytes=need, what=f"unit {u.index} ({u.kind}) at {pt.describe()}")
    if worst is not None and worst.bytes > limit:
        raise MeasureError(
            "grid",
            rule=f"{worst.what} needs about {worst.bytes / GIB:.1f} GiB on {dev.torch_device} but only "
            f"{limit / GIB:.1f} GiB may be used ({MEMORY_HEADROOM:.0%} of {free / GIB:.1f} GiB free); "
            f'use a smaller grid ({GRID_ENV}="prefill=…;batch=…;context=…") or a larger device',
        )


def grids_that_fit(
    grids: list[ProfileGrid], units: list[UnitCost], spec: ModelSpec, dev: Device, dtype_bytes: int, free: int
) -> list[ProfileGrid]:
    """The grids (order kept) whose every point fits ``free`` bytes; the coarsest one when none does
    (its memory check then names the point that does not fit)."""
    fits = []
    for g in grids:
        try:
            check_memory(units, spec, g, dev, dtype_bytes, free)
        except MeasureError:
            continue
        fits.append(g)
    return fits or grids[-1:]


def _point_seconds(cm: CostModel, units: list[UnitCost], pt: GridPoint, floor: float) -> float:
    t = cm.unit_times(1, pt.phase, pt.batch * pt.tokens, pt.context)
    return sum(max(float(t[u.index]), floor) for u in units)


def estimate_seconds(
    units: list[UnitCost], profile: Profile, grid: ProfileGrid, dev: Device, warmup: int, timed: int
) -> float:
    """Rough wall time of measuring ``units`` on ``grid``, seconds: analytic time per forward on the
    device's catalog entry, never below a per-forward floor (Python dispatch dominates small units)."""
    cm = CostModel(profile, dev.catalog)
    floor = 2e-4 if dev.cuda else 1.5e-3
    forwards = warmup + timed + 1
    decoders = [u for u in units if u.kind == "decoder"]
    total = 0.0
    for pt in grid.prefill_points():
        total += _point_seconds(cm, units, pt, floor) * forwards
    for c in grid.decode_contexts:
        for b in grid.decode_batches:
            step = GridPoint(phase="decode", batch=b, tokens=1, context=c)
            total += _point_seconds(cm, units, step, floor) * forwards
        fill = GridPoint(phase="prefill", batch=1, tokens=c, context=c)  # once per context, untimed
        total += _point_seconds(cm, decoders, fill, floor)
    init_bw = 20e9 if dev.cuda else 1.5e9  # random init + dtype conversion, bytes/s
    total += sum(u.weight_bytes for u in units) / init_bw
    return total

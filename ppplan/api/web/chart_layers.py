"""Per-layer cost strip: each planning unit's time per micro-batch and memory per GPU along the model,
the stages drawn as bands with their cuts, so the embedding's and the LM head's weight is visible."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ppplan.api.web.data import Unit, stage_units
from ppplan.api.web.svg import COLORS, Svg, fmt, nice_ticks

__all__ = ["layers_chart"]

_LEFT, _WIDTH, _TOP, _PANEL = 64.0, 760.0, 48.0, 120.0


def layers_chart(plan: Mapping[str, Any]) -> str:
    """The strip as SVG text: ``rect.stage-band[data-stage]`` per stage, ``line.cut`` between stages and
    one ``g.unit[data-unit]`` per unit (per stage for plans without ``units``) in each panel."""
    units = stage_units(plan)
    per_unit = any(u.kind != "stage" for u in units)
    deg = plan.get("degrees") or {}
    out_tokens = float((plan.get("workload") or {}).get("output_tokens") or 1)
    share = float(deg.get("micro_batch_size") or 1) / out_tokens  # prefill amortised per decode step
    span = sum(u.span for u in units) or 1
    plot_w = _WIDTH - _LEFT - 16
    gap = 40.0
    height = _TOP + 20 + 2 * _PANEL + gap + 40
    svg = Svg("layers", _WIDTH, height, "Cost of each unit along the model, with the stage cuts")
    what = "per unit" if per_unit else "per stage (this plan has no per-unit costs)"
    svg.text(None, 8, 16, f"Cost along the model, {what}", font_weight="600", font_size=14)
    svg.legend(
        None,
        _LEFT,
        34,
        [
            ("decode", COLORS["decode"]),
            ("prefill chunk share", COLORS["prefill"]),
            ("weights", COLORS["weights"]),
            ("KV cache", COLORS["kv"]),
        ],
    )

    def x(at: float) -> float:
        return _LEFT + plot_w * at / span

    starts, at = [], 0
    for u in units:
        starts.append(at)
        at += u.span
    _bands(svg, units, starts, x, _TOP, height - 40)
    time_top = _TOP + 20
    mem_top = time_top + _PANEL + gap
    times = [(u.decode_ms, u.prefill_ms * share) for u in units]
    mems = [(u.weights_gib, u.kv_gib) for u in units]
    _panel(svg, "time", "ms per micro-batch", time_top, units, starts, times, ("decode", "prefill"), x)
    _panel(svg, "memory", "GiB per GPU", mem_top, units, starts, mems, ("weights", "kv"), x)
    return svg.tostring()


def _bands(svg: Svg, units: list[Unit], starts: list[int], x: Any, top: float, bottom: float) -> None:
    g = svg.group(cls="stages")
    bounds: dict[int, list[float]] = {}
    for u, s in zip(units, starts, strict=True):
        lo_hi = bounds.setdefault(u.stage, [s, s + u.span])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], s), max(lo_hi[1], s + u.span)
    for k, (lo, hi) in sorted(bounds.items()):
        names = [u.name for u in units if u.stage == k]
        svg.rect(
            g,
            x(lo),
            top,
            x(hi) - x(lo),
            bottom - top,
            COLORS["band0" if k % 2 == 0 else "band1"],
            f"stage {k}: {names[0]} … {names[-1]}" if names else None,
            cls="stage-band",
            data_stage=k,
            data_first_unit=int(lo),
            data_units=int(hi - lo),
        )
        if x(hi) - x(lo) > 30:
            svg.text(
                g,
                (x(lo) + x(hi)) / 2,
                bottom + 14,
                f"stage {k}",
                text_anchor="middle",
                fill=COLORS["muted"],
                font_size=10,
            )
        if k > 0:
            svg.line(
                g,
                x(lo),
                top - 4,
                x(lo),
                bottom,
                COLORS["limit"],
                stroke_width=1.5,
                cls="cut",
                data_after_unit=int(lo) - 1,
            )


def _panel(
    svg: Svg,
    name: str,
    unit: str,
    top: float,
    units: list[Unit],
    starts: list[int],
    values: list[tuple[float, float]],
    parts: tuple[str, str],
    x: Any,
) -> None:
    g = svg.group(cls=f"panel panel-{name}", data_panel=name)
    ticks = nice_ticks(max((a + b for a, b in values), default=1.0), n=3)
    hi = ticks[-1] or 1.0

    def y(v: float) -> float:
        return top + _PANEL * (1 - v / hi)

    for t in ticks:
        svg.line(g, _LEFT, y(t), _WIDTH - 16, y(t), COLORS["grid"], stroke_width=0.5)
        svg.text(g, _LEFT - 6, y(t) + 4, fmt(t, 3), text_anchor="end", fill=COLORS["muted"], font_size=10)
    svg.text(g, _LEFT + 4, top - 8, f"{name} ({unit})", fill=COLORS["text"], font_size=11, font_weight="600")
    for u, s, (a, b) in zip(units, starts, values, strict=True):
        cell = svg.group(g, cls=f"unit unit-{u.kind}", data_unit=u.index, data_stage=u.stage, data_kind=u.kind)
        w = max(x(s + u.span) - x(s) - (0.5 if u.span == 1 else 2), 0.5)
        label = f"{u.name} (stage {u.stage}): "
        svg.rect(
            cell,
            x(s),
            y(a),
            w,
            y(0) - y(a),
            COLORS[parts[0]],
            label + f"{parts[0]} {a:.4g} {unit}",
            cls=f"seg seg-{parts[0]}",
            data_value=a,
        )
        svg.rect(
            cell,
            x(s),
            y(a + b),
            w,
            y(a) - y(a + b),
            COLORS[parts[1]],
            label + f"{'prefill chunk share' if parts[1] == 'prefill' else 'KV cache'} {b:.4g} {unit}",
            cls=f"seg seg-{parts[1]}",
            data_value=b,
        )
        if u.kind in ("embed", "head") and name == "time":
            svg.text(
                cell,
                x(s) + w / 2,
                y(a + b) - 3,
                "E" if u.kind == "embed" else "H",
                text_anchor="middle",
                font_size=10,
                font_weight="600",
            )

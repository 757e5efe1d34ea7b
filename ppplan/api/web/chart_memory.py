"""Memory per GPU: one stacked bar per stage (weights, KV cache, workspace, reserve, free), for the plan's
cut and each engine's default cut side by side, with the engine's memory limit and the GPU's HBM."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ppplan.api.web.data import Cut, StageMemory, memory_cuts
from ppplan.api.web.svg import COLORS, Svg, fmt, nice_ticks

__all__ = ["memory_chart"]

_SEGMENTS = (
    ("weights", "weights"),
    ("kv", "KV cache"),
    ("workspace", "workspace"),
    ("reserve", "reserve"),
    ("free", "free"),
)
_LEFT, _TOP, _PLOT_H, _WIDTH = 52.0, 44.0, 210.0, 760.0


def memory_chart(plan: Mapping[str, Any]) -> str:
    """The memory chart of ``plan`` as SVG text: groups ``g.mem-group[data-cut]``, one
    ``g.mem-bar[data-stage]`` per stage, one ``rect.seg[data-part]`` per memory kind (GiB in
    ``data-gib``)."""
    cuts = memory_cuts(plan)
    cluster = plan.get("cluster") or {}
    hbm = float(cluster.get("hbm_gib") or 0.0)
    totals = [s.total for c in cuts for s in c.stages or ()]
    limits = [s.limit for c in cuts for s in c.stages or ()]
    top = max([hbm, *totals, *limits, 1.0]) * 1.04
    nbars = sum(len(c.stages) if c.stages else max(len(c.partition), 2) for c in cuts)
    gap = 34.0
    room = _WIDTH - _LEFT - 40 - gap * (len(cuts) - 1)
    bar_w = min(48.0, max(4.0, room / max(nbars, 1) - 3))
    svg = Svg("memory", _WIDTH, _TOP + _PLOT_H + 70, "Memory per GPU by stage, GiB")
    svg.text(None, 8, 16, "Memory per GPU by stage (GiB)", font_weight="600", font_size=14)
    svg.legend(None, _LEFT, 34, [(label, COLORS[key]) for key, label in _SEGMENTS])

    def y(gib: float) -> float:
        return _TOP + _PLOT_H * (1 - gib / top)

    _axis(svg, top, y)
    used = nbars * (bar_w + 3) + gap * (len(cuts) - 1)
    x = _LEFT + 10 + max((room + gap * (len(cuts) - 1) - used) / 2, 0.0)  # centred in the plot
    for cut in cuts:
        x = _draw_cut(svg, cut, x, bar_w, y) + gap
    plan_limit = max((s.limit for s in cuts[0].stages or ()), default=0.0)
    if plan_limit > 0:
        svg.line(
            None,
            _LEFT,
            y(plan_limit),
            _WIDTH - 8,
            y(plan_limit),
            COLORS["limit"],
            stroke_dasharray="6 3",
            cls="limit-line",
            data_gib=plan_limit,
        )
        util = (plan.get("request") or {}).get("gpu_memory_utilization")
        what = f"limit {fmt(plan_limit)} GiB" + (f" ({util:g} × HBM)" if isinstance(util, int | float) else "")
        svg.text(None, _WIDTH - 10, y(plan_limit) - 4, what, text_anchor="end", fill=COLORS["limit"], font_size=11)
    if hbm > 0:
        svg.line(
            None,
            _LEFT,
            y(hbm),
            _WIDTH - 8,
            y(hbm),
            COLORS["axis"],
            stroke_dasharray="2 3",
            cls="hbm-line",
            data_gib=hbm,
        )
        svg.text(
            None,
            _WIDTH - 10,
            y(hbm) - 4,
            f"HBM {fmt(hbm)} GiB ({cluster.get('gpu', '')})",
            text_anchor="end",
            fill=COLORS["muted"],
            font_size=11,
        )
    return svg.tostring()


def _axis(svg: Svg, top: float, y: Any) -> None:
    g = svg.group(cls="axis")
    for t in nice_ticks(top / 1.04):
        if t > top:
            break
        svg.line(g, _LEFT, y(t), _WIDTH - 8, y(t), COLORS["grid"], stroke_width=0.5)
        svg.text(g, _LEFT - 6, y(t) + 4, fmt(t), text_anchor="end", fill=COLORS["muted"], font_size=11)
    svg.line(g, _LEFT, _TOP, _LEFT, _TOP + _PLOT_H, COLORS["axis"])


def _draw_cut(svg: Svg, cut: Cut, x0: float, bar_w: float, y: Any) -> float:
    """Draw one cut's bars from ``x0``; returns the x where the group ends."""
    g = svg.group(
        cls="mem-group",
        data_cut=cut.key,
        data_partition=",".join(map(str, cut.partition)),
        data_feasible=cut.feasible,
        data_source=cut.source,
    )
    base = _TOP + _PLOT_H
    if cut.stages is None:
        width = max(len(cut.partition), 2) * (bar_w + 3)
        svg.rect(
            g,
            x0,
            _TOP + _PLOT_H * 0.55,
            width,
            _PLOT_H * 0.45,
            COLORS["idle"],
            stroke=COLORS["grid"],
            stroke_dasharray="3 3",
            tip=f"{cut.label}: per-stage memory {cut.source}",
        )
        svg.text(g, x0 + width / 2, base - 10, "n/a", text_anchor="middle", fill=COLORS["muted"], font_size=11)
        x1 = x0 + width
    else:
        x = x0
        for k, st in enumerate(cut.stages):
            _bar(svg, g, cut, k, st, x, bar_w, y)
            if len(cut.stages) <= 16 or k % 4 == 0:
                svg.text(g, x + bar_w / 2, base + 13, str(k), text_anchor="middle", fill=COLORS["muted"], font_size=10)
            x += bar_w + 3
        x1 = x - 3
    label = cut.label + ("" if cut.feasible else " — does not fit")
    svg.text(
        g,
        (x0 + x1) / 2,
        base + 30,
        label,
        text_anchor="middle",
        font_size=11,
        fill=COLORS["text"] if cut.feasible else COLORS["limit"],
    )
    svg.text(
        g,
        (x0 + x1) / 2,
        base + 44,
        "[" + ",".join(map(str, cut.partition)) + "]",
        text_anchor="middle",
        fill=COLORS["muted"],
        font_size=10,
    )
    return x1


def _bar(svg: Svg, parent: Any, cut: Cut, k: int, st: StageMemory, x: float, w: float, y: Any) -> None:
    over = st.total > st.limit + 1e-9
    g = svg.group(
        parent,
        cls="mem-bar" + (" over-limit" if over else ""),
        data_stage=k,
        data_total_gib=st.total,
        data_limit_gib=st.limit,
    )
    level = 0.0
    values = {"weights": st.weights, "kv": st.kv, "workspace": st.workspace, "reserve": st.reserve, "free": st.free}
    for key, label in _SEGMENTS:
        v = values[key]
        tip = f"{cut.label}, stage {k}: {label} {v:.2f} GiB; total {st.total:.2f} of {st.limit:.1f} GiB" + (
            " — over the limit" if over else ""
        )
        extra: dict[str, Any] = {"stroke": COLORS["grid"], "stroke_dasharray": "2 2"} if key == "free" else {}
        svg.rect(
            g,
            x,
            y(level + v),
            w,
            y(level) - y(level + v),
            COLORS[key],
            tip,
            cls=f"seg seg-{key}",
            data_part=key,
            data_gib=v,
            **extra,
        )
        level += v
    if over:
        svg.rect(g, x - 1, y(st.total), w + 2, y(0) - y(st.total), "none", stroke=COLORS["limit"], stroke_width=2)

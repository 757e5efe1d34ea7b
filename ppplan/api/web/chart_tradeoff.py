"""Trade-off chart: output tokens/s per GPU against tokens/s per user (1000 / TPOT) for every scored
configuration, the Pareto front drawn through its points and the chosen plan highlighted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ppplan.api.web.data import Point, tradeoff_points
from ppplan.api.web.svg import COLORS, Svg, fmt, nice_ticks

__all__ = ["point_label", "tradeoff_chart"]

_LEFT, _TOP, _WIDTH, _HEIGHT, _BOTTOM = 70.0, 44.0, 760.0, 380.0, 48.0


def point_label(p: Point) -> str:
    """The hover text of a configuration: degrees, GPUs, batch and its numbers."""
    return (
        f"TP {p.tp} × PP {p.pp} × {p.replicas} replica(s) = {p.gpus} GPUs; "
        f"{p.micro_batches} micro-batch(es) of {p.micro_batch_size} sequences; "
        f"partition [{','.join(map(str, p.partition))}]\n"
        f"{p.per_gpu:,.1f} output tok/s per GPU ({p.throughput:,.0f} total), {p.per_user:,.1f} tok/s per user, "
        f"TPOT {p.tpot_ms:.2f} ms, TTFT {p.ttft_ms:.1f} ms, SLO {'met' if p.slo_met else 'MISSED'}"
        + ("\n(the chosen plan)" if p.chosen else "")
    )


def tradeoff_chart(plan: Mapping[str, Any]) -> str:
    """The trade-off chart as SVG text: ``circle.cand`` per configuration with its degrees and numbers in
    ``data-*`` attributes; the chosen one has ``data-chosen="true"`` and the plan's exact metrics."""
    pts = tradeoff_points(plan)
    svg = Svg("tradeoff", _WIDTH, _HEIGHT, "Throughput per GPU against speed per user")
    svg.text(None, 8, 16, "Trade-off: output tokens/s per GPU vs tokens/s per user", font_weight="600", font_size=14)
    svg.legend(
        None,
        _LEFT,
        34,
        [("configuration", COLORS["point"]), ("Pareto front", COLORS["frontier"]), ("chosen plan", COLORS["chosen"])],
    )
    plot_w, plot_h = _WIDTH - _LEFT - 20, _HEIGHT - _TOP - _BOTTOM
    xs = nice_ticks(max((p.per_user for p in pts), default=1.0) * 1.05)
    ys = nice_ticks(max((p.per_gpu for p in pts), default=1.0) * 1.05)
    xmax, ymax = xs[-1] or 1.0, ys[-1] or 1.0

    def px(v: float) -> float:
        return _LEFT + plot_w * v / xmax

    def py(v: float) -> float:
        return _TOP + plot_h * (1 - v / ymax)

    axis = svg.group(cls="axis")
    for v in xs:
        svg.line(axis, px(v), _TOP, px(v), _TOP + plot_h, COLORS["grid"], stroke_width=0.5)
        svg.text(axis, px(v), _TOP + plot_h + 15, fmt(v), text_anchor="middle", fill=COLORS["muted"], font_size=10)
    for v in ys:
        svg.line(axis, _LEFT, py(v), _LEFT + plot_w, py(v), COLORS["grid"], stroke_width=0.5)
        svg.text(axis, _LEFT - 6, py(v) + 4, fmt(v), text_anchor="end", fill=COLORS["muted"], font_size=10)
    svg.text(
        axis,
        _LEFT + plot_w / 2,
        _HEIGHT - 10,
        "tokens/s per user (1000 / TPOT ms) →",
        text_anchor="middle",
        font_size=11,
    )
    svg.text(
        axis,
        14,
        _TOP + plot_h / 2,
        "output tokens/s per GPU →",
        text_anchor="middle",
        font_size=11,
        transform=f"rotate(-90 14 {fmt(_TOP + plot_h / 2)})",
    )
    front = sorted((p for p in pts if p.frontier), key=lambda p: p.per_user)
    if len(front) > 1:
        svg.el(
            None,
            "polyline",
            {
                "class": "frontier",
                "fill": "none",
                "stroke": COLORS["frontier"],
                "stroke-width": 1.5,
                "points": " ".join(f"{fmt(px(p.per_user))},{fmt(py(p.per_gpu))}" for p in front),
            },
        )
    dots = svg.group(cls="points")
    for p in pts:  # the chosen point comes last, so it is drawn on top
        _dot(svg, dots, p, px(p.per_user), py(p.per_gpu))
    chosen = next((p for p in pts if p.chosen), None)
    if chosen is not None:
        cx, cy = px(chosen.per_user), py(chosen.per_gpu)
        right = cx > _LEFT + plot_w * 0.6
        svg.text(
            None,
            cx + (-10 if right else 10),
            cy - 10,
            f"chosen: TP{chosen.tp}×PP{chosen.pp}×{chosen.replicas}",
            text_anchor="end" if right else "start",
            fill=COLORS["chosen"],
            font_size=11,
            font_weight="600",
            stroke="#ffffff",
            stroke_width=3,
            paint_order="stroke",
        )
    return svg.tostring()


def _dot(svg: Svg, parent: Any, p: Point, cx: float, cy: float) -> None:
    color = COLORS["chosen"] if p.chosen else COLORS["frontier"] if p.frontier else COLORS["point"]
    attrs: dict[str, Any] = {
        "cx": cx,
        "cy": cy,
        "r": 7.0 if p.chosen else 4.5 if p.frontier else 3.5,
        "fill": color if p.slo_met else "#ffffff",
        "stroke": "#ffffff" if p.slo_met and not p.chosen else color,
        "stroke-width": 2 if p.chosen else 1,
        "class": "cand" + (" chosen" if p.chosen else "") + (" frontier" if p.frontier else ""),
        "data-chosen": p.chosen,
        "data-frontier": p.frontier,
        "data-tp": p.tp,
        "data-pp": p.pp,
        "data-replicas": p.replicas,
        "data-gpus": p.gpus,
        "data-micro-batches": p.micro_batches,
        "data-batch": p.micro_batch_size,
        "data-slo-met": p.slo_met,
        # repr: the exact numbers, so a test (or a reader) can compare them with the plan's metrics
        "data-per-gpu": repr(p.per_gpu),
        "data-per-user": repr(p.per_user),
        "data-tpot-ms": repr(p.tpot_ms),
    }
    c = svg.el(parent, "circle", attrs)
    svg.el(c, "title", text=point_label(p))

"""Pipeline timeline: the micro-batches flowing through the stages over one steady-state decode cycle
(decode, the amortised prefill-chunk share, the send), each stage's idle time, and the bubble the
training-style seed schedules would have at the same degrees."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ppplan.api.web.data import stage_times
from ppplan.api.web.svg import COLORS, Svg, fmt, nice_ticks

__all__ = ["ScheduleBubble", "schedule_bubbles", "timeline_chart"]

_LEFT, _WIDTH, _TOP = 78.0, 760.0, 56.0
INTERLEAVE = 2
"""Virtual stages per GPU assumed for the interleaved schedule (Megatron-LM's usual 2)."""


@dataclass(frozen=True)
class ScheduleBubble:
    """Share of a cycle the pipeline idles under a schedule, at the plan's PP and micro-batch count."""

    key: str
    label: str
    bubble: float
    note: str


def schedule_bubbles(pp: int, m: int, steady_bubble: float) -> list[ScheduleBubble]:
    """The plan's decode schedule and the seed schedules at the same degrees (``pp`` stages, ``m``
    micro-batches). Fill-drain schedules flush the pipeline after every step, and an autoregressive
    decode step of a micro-batch cannot start before its previous token left the last stage, so they
    pay the fill and drain on every token: (p − 1) / (m + p − 1); with v virtual stages per GPU the fill
    is v times shorter: (p − 1) / (v·m + p − 1)."""
    fill = (pp - 1) / (m + pp - 1) if pp > 1 else 0.0
    inter = (pp - 1) / (INTERLEAVE * m + pp - 1) if pp > 1 else 0.0
    return [
        ScheduleBubble(
            "steady",
            f"decode steady state, M = {m} in flight",
            steady_bubble,
            "micro-batches circulate round-robin; a stage is never waiting once M ≥ PP",
        ),
        ScheduleBubble("gpipe", "GPipe fill-drain per step", fill, "(PP−1)/(M+PP−1): the pipeline refills every token"),
        ScheduleBubble(
            "1f1b", "1F1B", fill, "same bubble as GPipe without a backward pass; it only saves activation memory"
        ),
        ScheduleBubble(
            "interleaved",
            f"interleaved, {INTERLEAVE} virtual stages/GPU",
            inter,
            f"(PP−1)/({INTERLEAVE}·M+PP−1), at {INTERLEAVE}× the point-to-point sends",
        ),
    ]


def timeline_chart(plan: Mapping[str, Any]) -> str:
    """The timeline of ``plan`` as SVG text: one ``g.tl-stage[data-stage]`` row per stage holding
    ``g.mb[data-micro-batch]`` blocks, then one ``g.bubble[data-schedule]`` bar per schedule."""
    times = stage_times(plan)
    sched = plan.get("schedule") or {}
    deg = plan.get("degrees") or {}
    pp = max(len(times), 1)
    m = int(sched.get("micro_batches") or deg.get("micro_batches") or 1)
    slowest = max((t.busy_ms for t in times), default=1.0) or 1.0
    slots = max(m, pp)
    cycle = float(sched.get("cycle_ms") or slots * slowest)
    slot = cycle / slots
    row_h = 24.0 if pp <= 16 else max(6.0, 384.0 / pp)
    plot_w = _WIDTH - _LEFT - 16
    rows_bottom = _TOP + pp * row_h
    bubbles = schedule_bubbles(pp, m, float(sched.get("bubble_fraction") or 0.0))
    height = rows_bottom + 40 + 22 * len(bubbles) + 30
    svg = Svg("timeline", _WIDTH, height, "Pipeline timeline over one decode cycle")
    name = str(sched.get("name") or f"decode steady state, M = {m} micro-batch(es) in flight")
    svg.text(
        None,
        8,
        16,
        f"Pipeline timeline: one decode cycle = {fmt(cycle, 2)} ms (≈ TPOT)",
        font_weight="600",
        font_size=14,
    )
    svg.text(
        None,
        8,
        32,
        f"schedule: {name}; {m} micro-batch(es) of {sched.get('micro_batch_size', '?')} sequences",
        fill=COLORS["muted"],
        font_size=11,
        cls="schedule-name",
    )
    svg.legend(
        None,
        _LEFT,
        48,
        [
            ("decode", COLORS["decode"]),
            ("prefill chunk share", COLORS["prefill"]),
            ("send", COLORS["send"]),
            ("idle", COLORS["idle"]),
        ],
    )

    def x(ms: float) -> float:
        return _LEFT + plot_w * min(ms, cycle) / cycle

    for t in times:
        y0 = _TOP + t.index * row_h
        busy_total = min(m * t.busy_ms, cycle)
        idle = max(cycle - m * t.busy_ms, 0.0)
        row = svg.group(
            cls="tl-stage",
            data_stage=t.index,
            data_busy_ms=busy_total,
            data_idle_ms=idle,
            data_utilization=busy_total / cycle if cycle else 0.0,
        )
        svg.rect(
            row,
            _LEFT,
            y0 + 2,
            plot_w,
            row_h - 4,
            COLORS["idle"],
            f"stage {t.index}: idle {idle:.3f} ms of {cycle:.3f} ms ({idle / cycle:.0%})" if cycle else None,
            cls="idle",
        )
        svg.text(
            row,
            _LEFT - 6,
            y0 + row_h / 2 + 4,
            f"stage {t.index}",
            text_anchor="end",
            font_size=11 if row_h >= 14 else 8,
        )
        for mb in range(m):
            _block(svg, row, t, mb, ((mb + t.index) % slots) * slot, y0, row_h, x)
    ticks = svg.group(cls="axis")
    for v in nice_ticks(cycle):
        if v <= cycle * 1.0001:
            svg.line(ticks, x(v), _TOP, x(v), rows_bottom + 3, COLORS["grid"], stroke_width=0.5)
            svg.text(ticks, x(v), rows_bottom + 15, fmt(v, 2), text_anchor="middle", fill=COLORS["muted"], font_size=10)
    svg.text(ticks, _WIDTH - 16, rows_bottom + 28, "ms", text_anchor="end", fill=COLORS["muted"], font_size=10)
    _bubbles(svg, bubbles, rows_bottom + 44)
    return svg.tostring()


def _block(svg: Svg, row: Any, t: Any, mb: int, start: float, y0: float, row_h: float, x: Any) -> None:
    g = svg.group(row, cls="mb", data_stage=t.index, data_micro_batch=mb, data_start_ms=start)
    at = start
    for key, ms, label in (
        ("decode", t.decode_ms, "decode"),
        ("prefill", t.prefill_ms, "prefill chunk share"),
        ("send", t.send_ms, "send"),
    ):
        if ms <= 0:
            continue
        tip = f"stage {t.index}, micro-batch {mb}: {label} {ms:.3f} ms (busy {t.busy_ms:.3f} ms per micro-batch)"
        svg.rect(g, x(at), y0 + 2, x(at + ms) - x(at), row_h - 4, COLORS[key], tip, cls=f"seg seg-{key}", data_ms=ms)
        at += ms
    if x(start + t.busy_ms) - x(start) > 26 and row_h >= 14:
        svg.text(g, x(start) + 4, y0 + row_h / 2 + 4, f"m{mb}", fill="#ffffff", font_size=10)


def _bubbles(svg: Svg, bubbles: list[ScheduleBubble], y0: float) -> None:
    g = svg.group(cls="bubbles")
    svg.text(
        g,
        8,
        y0 - 6,
        "Pipeline bubble at the same PP and M (share of the cycle the stages idle)",
        font_weight="600",
        font_size=12,
    )
    bar_x, bar_w = 250.0, _WIDTH - 250.0 - 70
    for i, b in enumerate(bubbles):
        y = y0 + 6 + i * 22
        row = svg.group(g, cls="bubble", data_schedule=b.key, data_bubble=b.bubble)
        svg.text(
            row,
            bar_x - 8,
            y + 11,
            b.label,
            text_anchor="end",
            font_size=11,
            font_weight="600" if b.key == "steady" else None,
        )
        svg.rect(row, bar_x, y, bar_w, 14, COLORS["idle"], b.note)
        svg.rect(
            row,
            bar_x,
            y,
            bar_w * b.bubble,
            14,
            COLORS["limit"] if b.bubble > 0 else COLORS["send"],
            f"{b.label}: bubble {b.bubble:.1%} — {b.note}",
        )
        svg.text(row, bar_x + bar_w + 6, y + 11, f"{b.bubble:.0%}", font_size=11)

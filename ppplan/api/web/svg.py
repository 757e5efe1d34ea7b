"""A small SVG builder on :mod:`xml.etree.ElementTree`: the tree escapes every text and attribute, so a
model name or engine flag can never break the markup, and every chart parses as XML.

Charts use presentation attributes (``fill``, ``stroke``) rather than ``style`` attributes, so a page
with a strict Content-Security-Policy (no inline styles) draws them unchanged.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping

__all__ = ["COLORS", "Svg", "fmt", "nice_ticks"]

SVG_NS = "http://www.w3.org/2000/svg"

COLORS: Mapping[str, str] = {
    "weights": "#4e79a7",
    "kv": "#f28e2b",
    "workspace": "#76b7b2",
    "reserve": "#9c755f",
    "free": "#e9ecef",
    "limit": "#d62728",
    "decode": "#7b61a8",
    "prefill": "#e8b923",
    "send": "#59a14f",
    "idle": "#f3f4f6",
    "grid": "#d0d4d9",
    "axis": "#555b61",
    "text": "#1f2328",
    "muted": "#6b7280",
    "point": "#8da0cb",
    "frontier": "#4e79a7",
    "chosen": "#d62728",
    "band0": "#f5f7fa",
    "band1": "#e9eef5",
}
"""Colour of each chart element; shared so the legends and the bars agree."""

Attr = str | int | float | bool | None


def fmt(v: float, digits: int = 1) -> str:
    """``v`` as a short decimal: coordinates and labels (no exponent, no trailing zeros)."""
    if not math.isfinite(v):
        return "0"
    s = f"{v:.{digits}f}"
    return s.rstrip("0").rstrip(".") if "." in s else s


def _attr(v: Attr) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return fmt(v, 2)
    return str(v)


class Svg:
    """One chart: an ``<svg>`` root with a viewBox of ``width`` × ``height`` user units (pixels in a
    standalone file; scaled to the container on a page).

    Args:
        chart_id: the element id and ``data-chart`` name (stable, for tests and links).
        width, height: the viewBox size.
        title: the accessible name (``<title>`` of the root).
    """

    def __init__(self, chart_id: str, width: float, height: float, title: str) -> None:
        self.width = width
        self.height = height
        self.root = ET.Element(
            "svg",
            {
                "xmlns": SVG_NS,
                "id": f"chart-{chart_id}",
                "class": "chart",
                "data-chart": chart_id,
                "viewBox": f"0 0 {fmt(width)} {fmt(height)}",
                "width": fmt(width),
                "height": fmt(height),
                "role": "img",
                "font-family": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
                "font-size": "12",
            },
        )
        ET.SubElement(self.root, "title").text = title

    def el(
        self, parent: ET.Element | None, tag: str, attrs: Mapping[str, Attr] | None = None, *, text: str | None = None
    ) -> ET.Element:
        """A child ``tag`` of ``parent`` (the root when None); None-valued attributes are left out."""
        e = ET.SubElement(self.root if parent is None else parent, tag)
        for k, v in (attrs or {}).items():
            if v is not None:
                # data-* carry exact numbers for readers and tests; geometry is rounded to keep files small
                e.set(k, repr(v) if k.startswith("data-") and isinstance(v, float) else _attr(v))
        if text is not None:
            e.text = text
        return e

    def group(self, parent: ET.Element | None = None, **attrs: Attr) -> ET.Element:
        """A ``<g>``; keyword ``data_stage=1`` becomes ``data-stage="1"``, ``cls`` becomes ``class``."""
        return self.el(parent, "g", _names(attrs))

    def rect(
        self,
        parent: ET.Element | None,
        x: float,
        y: float,
        w: float,
        h: float,
        fill: str,
        tip: str | None = None,
        **attrs: Attr,
    ) -> ET.Element:
        """A rectangle with an optional hover tooltip (an SVG ``<title>``, shown without JavaScript)."""
        r = self.el(
            parent, "rect", {"x": x, "y": y, "width": max(w, 0.0), "height": max(h, 0.0), "fill": fill, **_names(attrs)}
        )
        if tip:
            ET.SubElement(r, "title").text = tip
        return r

    def line(
        self, parent: ET.Element | None, x1: float, y1: float, x2: float, y2: float, stroke: str, **attrs: Attr
    ) -> ET.Element:
        """A straight line."""
        return self.el(parent, "line", {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "stroke": stroke, **_names(attrs)})

    def text(self, parent: ET.Element | None, x: float, y: float, s: str, **attrs: Attr) -> ET.Element:
        """A text label (``anchor="end"`` etc. through ``text_anchor``)."""
        base: dict[str, Attr] = {"x": x, "y": y, "fill": COLORS["text"]}
        return self.el(parent, "text", {**base, **_names(attrs)}, text=s)

    def legend(self, parent: ET.Element | None, x: float, y: float, items: list[tuple[str, str]]) -> float:
        """Colour swatches with labels in one row from (x, y); returns the x after the last item."""
        g = self.group(parent, cls="legend")
        for label, color in items:
            self.rect(g, x, y - 9, 10, 10, color, stroke=COLORS["axis"], stroke_width=0.5)
            self.text(g, x + 14, y, label, font_size=11)
            x += 22 + 6.2 * len(label)
        return x

    def tostring(self) -> str:
        """The chart as SVG markup (no XML declaration, so it inlines into HTML as is)."""
        return ET.tostring(self.root, encoding="unicode")


def _names(attrs: Mapping[str, Attr]) -> dict[str, Attr]:
    """Python keywords to SVG attribute names: ``cls`` → ``class``, ``data_stage`` → ``data-stage``,
    ``stroke_width`` → ``stroke-width``."""
    return {("class" if k == "cls" else k.replace("_", "-")): v for k, v in attrs.items()}


def nice_ticks(hi: float, n: int = 5) -> list[float]:
    """Round tick values from 0 to at least ``hi`` (about ``n`` of them): steps of 1, 2 or 5 × 10^k."""
    if not math.isfinite(hi) or hi <= 0:
        return [0.0, 1.0]
    raw = hi / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    count = math.ceil(hi / step - 1e-9)
    return [i * step for i in range(count + 1)]

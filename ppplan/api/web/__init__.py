"""Pictures of a plan: server-rendered SVG charts and the HTML plan view (pure functions of a Plan JSON
dict), the pages of ``ppplan serve`` and ``ppplan plans show --svg``. See docs/web.md."""

from ppplan.api.web.render import render_html, render_plan_view, render_svgs

__all__ = ["render_html", "render_plan_view", "render_svgs"]

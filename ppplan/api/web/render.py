"""The plan view: the four charts, the headline numbers, the engine settings with copy buttons, the plan
JSON download and predicted vs measured. Pure functions of a Plan JSON dict (and its measurements): the
same markup serves ``ppplan serve``'s pages, ``ppplan plan --html`` and ``ppplan plans show --svg``."""

from __future__ import annotations

import json
import math
import statistics
import urllib.parse
from collections.abc import Mapping, Sequence
from html import escape
from importlib import resources
from typing import Any

from ppplan.api.web.chart_layers import layers_chart
from ppplan.api.web.chart_memory import memory_chart
from ppplan.api.web.chart_timeline import timeline_chart
from ppplan.api.web.chart_tradeoff import tradeoff_chart
from ppplan.core.errors import PpplanError
from ppplan.partitioner.exports import render_export

__all__ = ["CHARTS", "asset", "render_html", "render_plan_view", "render_svgs"]

CHARTS = {
    "memory": (
        memory_chart,
        "Memory per GPU by stage: this plan's cut and each engine's default cut at the same "
        "degrees; the dashed red line is the memory the engine may use (gpu-memory-utilization × HBM).",
    ),
    "timeline": (
        timeline_chart,
        "One steady-state decode cycle: each micro-batch's decode step, its share of "
        "a prefill chunk and the send to the next stage; grey is idle time. Decode is autoregressive: "
        "a micro-batch's next token enters stage 0 only after its current one leaves the last stage, "
        "so fill-drain schedules (GPipe, 1F1B) would refill the pipe on every token. Keeping M = PP "
        "micro-batches in flight round-robin fills every slot; what idles is the imbalance between "
        "stages, which the cut minimises.",
    ),
    "tradeoff": (
        tradeoff_chart,
        "Every scored configuration: output tokens/s per GPU (cost) against tokens/s "
        "per user (1000 / TPOT, speed). The line is the Pareto front; the red point is this plan; "
        "hollow points miss an SLO. Hover a point for its degrees, GPUs and batch.",
    ),
    "layers": (
        layers_chart,
        "Time per micro-batch and memory per GPU of each unit along the model; red lines "
        "are the stage cuts. The embedding (E) and LM head (H) weigh differently from a decoder layer, "
        "which is why an even split of layers is not an even split of work.",
    ),
}
"""Chart name → (renderer, caption), in page order."""

_SETTINGS = (("vllm", "vLLM"), ("sglang", "SGLang"), ("trtllm", "TensorRT-LLM (LLM API)"))


def asset(name: str) -> str:
    """Text of a packaged web asset (``ppplan.css``, ``copy.js``, ``app.js``)."""
    return resources.files("ppplan.api.web").joinpath("static", name).read_text(encoding="utf-8")


def render_svgs(plan: Mapping[str, Any]) -> dict[str, str]:
    """Every chart of ``plan`` as standalone SVG text, by chart name (``memory``, ``timeline``,
    ``tradeoff``, ``layers``)."""
    return {name: fn(plan) for name, (fn, _) in CHARTS.items()}


def _num(v: Any, spec: str, unit: str = "") -> str:
    return f"{v:{spec}}{unit}" if isinstance(v, int | float) and not isinstance(v, bool) else "—"


def _summary(plan: Mapping[str, Any]) -> str:
    m, deg, wl = plan.get("metrics") or {}, plan.get("degrees") or {}, plan.get("workload") or {}
    model, cluster = plan.get("model") or {}, plan.get("cluster") or {}
    tpot = m.get("tpot_ms")
    per_user = m.get("tokens_per_s_per_user") or (1000.0 / tpot if isinstance(tpot, int | float) and tpot else None)
    slo = bool(m.get("slo_met", True))
    facts = [
        ("output tokens/s", _num(m.get("throughput_tokens_per_s"), ",.0f"), "all replicas"),
        ("per GPU", _num(m.get("throughput_per_gpu"), ",.1f"), "output tok/s"),
        ("per user", _num(per_user, ",.1f"), "tok/s (1000 / TPOT)"),
        ("TPOT", _num(tpot, ".2f", " ms"), "steady-state decode"),
        ("TTFT", _num(m.get("ttft_ms"), ".1f", " ms"), "idle replica"),
        ("KV capacity", _num(m.get("kv_capacity_tokens"), ",.0f"), "tokens per replica"),
    ]
    cells = "".join(
        f'<div class="fact"><span class="k">{escape(k)}</span><span class="v" data-fact="{escape(k)}">{escape(v)}'
        f'</span><span class="u">{escape(u)}</span></div>'
        for k, v, u in facts
    )
    partition = ",".join(map(str, plan.get("partition") or []))
    head = (
        f"{model.get('name', '?')} on {cluster.get('count', '?')}× {cluster.get('gpu', '?')} — "
        f"TP {deg.get('tp', '?')} × PP {deg.get('pp', '?')} × {deg.get('replicas', '?')} replica(s), "
        f"partition [{partition}]"
    )
    workload = (
        f"workload: {wl.get('prompt_tokens', '?')} prompt + {wl.get('output_tokens', '?')} output tokens, "
        f"{wl.get('concurrency', '?')} sequences in flight, {wl.get('context', '?')} KV tokens per sequence; "
        f"objective {plan.get('objective', '?')}; weights {plan.get('weight_dtype', '?')}, "
        f"KV {plan.get('kv_dtype', '?')}"
    )
    slo_line = (
        '<p class="slo ok" data-slo-met="true">SLOs met</p>'
        if slo
        else '<p class="slo missed" data-slo-met="false">SLO MISSED: no configuration meets the latency bounds; '
        "this is the closest one</p>"
    )
    return (
        f'<header class="plan-head"><h2>{escape(head)}</h2><p class="muted">{escape(workload)}</p>{slo_line}'
        f'<div class="facts">{cells}</div></header>'
    )


def _settings(plan: Mapping[str, Any]) -> str:
    parts = []
    for fmt_name, label in _SETTINGS:
        try:
            text = render_export(dict(plan), fmt_name)
        except (PpplanError, KeyError, TypeError):  # an old or hand-edited plan without this engine's export
            continue
        block = f"settings-{fmt_name}"
        parts.append(
            f'<div class="setting"><div class="setting-head"><h4>{escape(label)}</h4>'
            f'<button type="button" class="copy" data-copy="{block}">Copy</button></div>'
            f'<pre><code id="{block}">{escape(text)}</code></pre></div>'
        )
    return f'<section class="settings" id="engine-settings"><h3>Engine settings</h3>{"".join(parts)}</section>'


def _measured(plan: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    """Measured stage times against the plan's predictions, per stage and phase (median over runs)."""
    if not rows:
        return (
            '<section class="measured" id="measured"><h3>Predicted vs measured</h3><p class="muted">No '
            "measurements stored for this plan: <code>ppplan run PLAN_ID</code> runs it and stores them.</p></section>"
        )
    stages = plan.get("stages") or []
    mbs = (plan.get("degrees") or {}).get("micro_batch_size")
    requests = [r for r in rows if r.get("phase") in ("ttft", "tpot")]
    rows = [r for r in rows if r.get("phase") not in ("ttft", "tpot")]
    if not rows:
        return _measured_requests(plan, requests)
    groups: dict[tuple[int, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((int(r.get("stage", 0)), str(r.get("phase", "decode"))), []).append(r)
    totals: dict[str, float] = {}
    for (_, phase), rs in groups.items():
        totals[phase] = totals.get(phase, 0.0) + statistics.median(float(r.get("compute_s", 0)) for r in rs)
    body = []
    for (k, phase), rs in sorted(groups.items()):
        meas = statistics.median(float(r.get("compute_s", 0)) for r in rs) * 1000
        times = (stages[k].get("times") or {}) if k < len(stages) else {}
        pred = times.get(f"{phase}_ms")
        pred_total = sum(float((s.get("times") or {}).get(f"{phase}_ms") or 0) for s in stages) or None
        share_m = meas / 1000 / totals[phase] if totals[phase] else None
        share_p = pred / pred_total if isinstance(pred, int | float) and pred_total else None
        b = rs[-1].get("micro_batch_size")
        body.append(
            f'<tr data-stage="{k}" data-phase="{escape(phase)}"><td>{k}</td><td>{escape(phase)}</td>'
            f"<td>{len(rs)}</td><td>{escape(str(rs[-1].get('tokens', '')))} / {escape(str(b))}"
            f"{'' if b == mbs or phase != 'decode' else ' (plan: ' + escape(str(mbs)) + ')'}</td>"
            f"<td>{_num(pred, '.3f')}</td><td>{meas:.3f}</td>"
            f"<td>{_num(share_p, '.0%')}</td><td>{_num(share_m, '.0%')}</td></tr>"
        )
    return (
        '<section class="measured" id="measured"><h3>Predicted vs measured</h3><p class="muted">Measured on the '
        "run's device and shapes (which may differ from the plan's GPU); compare the shares of the slowest stage, "
        'which decide the cut.</p><div class="table-wrap"><table><thead><tr><th>stage</th><th>phase</th>'
        "<th>steps</th><th>tokens / batch</th><th>predicted ms</th><th>measured ms</th><th>predicted share</th>"
        f"<th>measured share</th></tr></thead><tbody>{''.join(body)}</tbody></table></div>"
        + _request_table(plan, requests)
        + "</section>"
    )


def _quantile(values: list[float], q: float) -> float:
    xs = sorted(values)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def _request_table(plan: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    """Per-request TTFT and TPOT of load runs (``ppplan run --workload``) against the plan's figures."""
    if not rows:
        return ""
    m = plan.get("metrics") or {}
    pred = {"ttft": (m.get("ttft_p50_ms"), m.get("ttft_p90_ms")), "tpot": (m.get("tpot_ms"), None)}
    body = []
    for phase in ("ttft", "tpot"):
        vals = [float(r.get("compute_s", 0)) * 1000 for r in rows if r.get("phase") == phase]
        if not vals:
            continue
        p50, p90 = pred[phase]
        body.append(
            f'<tr data-phase="{phase}"><td>{phase.upper()}</td><td>{len(vals)}</td><td>{_num(p50, ".1f")}</td>'
            f"<td>{_quantile(vals, 0.5):.1f}</td><td>{_num(p90, '.1f')}</td><td>{_quantile(vals, 0.9):.1f}</td></tr>"
        )
    return (
        '<p class="muted">Load runs (<code>ppplan run PLAN --workload poisson:RATE</code>): per request, on the '
        "run's device and (scaled) shapes; the plan's figures are for its GPU at its workload.</p>"
        '<div class="table-wrap"><table id="measured-requests"><thead><tr><th></th><th>requests</th>'
        "<th>predicted p50 ms</th><th>measured p50 ms</th><th>predicted p90 ms</th><th>measured p90 ms</th>"
        f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _measured_requests(plan: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    return (
        '<section class="measured" id="measured"><h3>Predicted vs measured</h3>'
        + _request_table(plan, rows)
        + "</section>"
    )


def render_plan_view(
    plan: Mapping[str, Any],
    *,
    plan_id: str | None = None,
    measurements: Sequence[Mapping[str, Any]] | None = None,
    download_href: str | None = None,
) -> str:
    """The plan view as an HTML fragment (one ``<article>``): summary, charts, settings, download and,
    when ``measurements`` is given (even empty), predicted vs measured.

    Args:
        plan_id: shown and set as ``data-plan-id``.
        measurements: stored measurement rows (``GET /v1/plans/{id}/measurements``'s ``data``).
        download_href: where the JSON download link points; None embeds the plan as a ``data:`` URI.
    """
    figures = []
    for name, (fn, caption) in CHARTS.items():
        figures.append(
            f'<figure class="chart-box" id="fig-{name}"><div class="chart-scroll">{fn(plan)}</div>'
            f"<figcaption>{escape(caption)}</figcaption></figure>"
        )
    if download_href is None:
        download_href = "data:application/json;charset=utf-8," + urllib.parse.quote(json.dumps(plan, indent=1))
    name = f"plan-{plan_id}.json" if plan_id else "plan.json"
    notes = "".join(f"<li>{escape(str(n))}</li>" for n in plan.get("notes") or [])
    prov = plan.get("provenance") or {}
    predicted = (plan.get("metrics") or {}).get("predicted_by") or prov.get("profile_label", "")
    parts = [
        _summary(plan),
        *figures,
        _settings(plan),
        f'<p class="download"><a id="plan-json" href="{escape(download_href)}" download="{escape(name)}">'
        f"Download the plan JSON</a> (Plan JSON v{escape(str(plan.get('schema_version', 1)))})</p>",
        _measured(plan, measurements) if measurements is not None else "",
        f'<footer class="muted"><p>predicted by {escape(str(predicted))}; solver {escape(str(prov.get("solver", "")))}'
        f"; ppplan {escape(str(prov.get('ppplan_version', '')))}</p><ul>{notes}</ul></footer>",
    ]
    ident = f' data-plan-id="{escape(plan_id)}"' if plan_id else ""
    return f'<article class="plan-view" id="plan-view"{ident}>{"".join(parts)}</article>'


def render_html(
    plan: Mapping[str, Any],
    *,
    standalone: bool = True,
    plan_id: str | None = None,
    measurements: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The plan view as HTML. ``standalone``: one self-contained document (inline CSS, SVG and the copy
    button's script; the JSON download a ``data:`` URI; no external URL), e.g. for ``ppplan plan --html``.
    Otherwise the bare fragment of :func:`render_plan_view`."""
    view = render_plan_view(plan, plan_id=plan_id, measurements=measurements)
    if not standalone:
        return view
    model = (plan.get("model") or {}).get("name", "plan")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>ppplan: {escape(str(model))}</title><style>{asset('ppplan.css')}</style></head>"
        f'<body><main class="page">{view}</main><script>{asset("copy.js")}</script></body></html>\n'
    )

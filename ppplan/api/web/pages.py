"""HTML of the pages ``ppplan serve`` shows: the planning form (``/``), the stored plans (``/plans``) and
one plan (``/plans/{id}``). No inline script, style or event handler, so the pages run under a strict
Content-Security-Policy (:data:`CSP`): the behaviour lives in ``/static/app.js`` and ``/static/copy.js``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["CSP", "FORM_FIELDS", "Field", "form_page", "message_page", "page", "plan_page", "plans_page"]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
"""Content-Security-Policy of every page: only this server's scripts, styles and API."""

OBJECTIVES = ("throughput", "latency", "min-gpus")


@dataclass(frozen=True)
class Field:
    """One input of the planning form: the ``/v1/plans`` body field it fills and the CLI option it mirrors."""

    name: str
    label: str
    kind: str  # int | float | text | select
    group: str
    hint: str = ""
    choices: tuple[str, ...] = ()
    default: str = ""
    minimum: str | None = None
    step: str | None = None

    @property
    def cli(self) -> str:
        """The ``ppplan plan`` option: ``--max-tpot-ms`` for ``max_tpot_ms``."""
        return "--" + self.name.replace("_", "-")


FORM_FIELDS: tuple[Field, ...] = (
    Field("nodes", "nodes", "int", "cluster", "default: as few as fit", minimum="1"),
    Field("prompt_tokens", "prompt tokens", "int", "workload", "default 2048", minimum="1"),
    Field("output_tokens", "output tokens", "int", "workload", "default 512", minimum="1"),
    Field("concurrency", "concurrency", "int", "workload", "sequences in flight, all replicas", minimum="1"),
    Field("context", "context", "int", "workload", "KV tokens per sequence", minimum="1"),
    Field("request_rate", "request rate", "float", "workload", "requests/s", minimum="0", step="any"),
    Field("objective", "objective", "select", "goal", choices=OBJECTIVES, default="throughput"),
    Field("max_tpot_ms", "max TPOT ms", "float", "goal", "SLO", minimum="0", step="any"),
    Field("max_ttft_ms", "max TTFT ms", "float", "goal", "SLO", minimum="0", step="any"),
    Field("tp", "TP (pin)", "int", "pins", "tensor-parallel degree", minimum="1"),
    Field("pp", "PP (pin)", "int", "pins", "pipeline-parallel degree", minimum="1"),
    Field(
        "weight_dtype",
        "weight dtype",
        "select",
        "pins",
        choices=("bf16", "fp16", "fp8", "int8", "int4"),
        default="bf16",
    ),
    Field("kv_dtype", "KV dtype", "select", "pins", choices=("bf16", "fp16", "fp8"), default="bf16"),
    Field("engine", "engine", "select", "pins", "its memory model", choices=("", "vllm", "sglang", "trtllm")),
    Field("gpu_memory_utilization", "GPU memory utilization", "float", "pins", "default 0.9", minimum="0", step="any"),
    Field("runtime_reserve_gib", "runtime reserve GiB", "float", "pins", "default 2", minimum="0", step="any"),
    Field("prefill_chunk_tokens", "prefill chunk tokens", "int", "pins", "default 8192", minimum="1"),
    Field("solver", "solver", "select", "pins", choices=("dp", "cpsat"), default="dp"),
)
"""The optional inputs, in form order (model and GPUs come first and are built separately)."""

_GROUPS = (
    ("cluster", "Cluster"),
    ("workload", "Workload"),
    ("goal", "Objective and SLOs"),
    ("pins", "Pins, dtypes and memory"),
)


def page(title: str, body: str, *, active: str = "") -> str:
    """A full page: navigation, ``body``, the stylesheet and scripts (served from ``/static``)."""
    links = (("/", "New plan", "new"), ("/plans", "Stored plans", "plans"), ("/docs", "API docs", "docs"))
    current = ' aria-current="page"'
    nav = "".join(f'<a href="{href}"{current if key == active else ""}>{label}</a>' for href, label, key in links)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{escape(title)} · ppplan</title><link rel="icon" href="data:,">'
        '<link rel="stylesheet" href="/static/ppplan.css">'
        '<script src="/static/copy.js" defer></script><script src="/static/app.js" defer></script></head>'
        f'<body><nav class="top"><span class="brand">ppplan</span>{nav}</nav><main class="page">{body}</main>'
        "</body></html>\n"
    )


def _input(f: Field) -> str:
    attrs = f'name="{f.name}" id="f-{f.name}" data-type="{f.kind}" data-cli="{f.cli}"'
    if f.kind == "select":
        opts = "".join(
            f'<option value="{escape(c)}"{" selected" if c == f.default else ""}>{escape(c or "default")}</option>'
            for c in f.choices
        )
        control = f"<select {attrs}>{opts}</select>"
    else:
        extra = (f' min="{f.minimum}"' if f.minimum else "") + (f' step="{f.step}"' if f.step else "")
        control = f'<input type="number" inputmode="decimal" {attrs}{extra} placeholder="{escape(f.hint)}">'
    return f'<label for="f-{f.name}">{escape(f.label)}{control}</label>'


def form_page(presets: Sequence[str], gpus: Sequence[str], *, default_model: str, default_gpu: str) -> str:
    """The planning form (``/``); the plan appears below it (``#result``) once made."""
    models = "".join(
        f'<option value="{escape(p)}"{" selected" if p == default_model else ""}>{escape(p)}</option>' for p in presets
    )
    kinds = "".join(
        f'<option value="{escape(g)}"{" selected" if g == default_gpu else ""}>{escape(g)}</option>' for g in gpus
    )
    groups = {key: [f for f in FORM_FIELDS if f.group == key] for key, _ in _GROUPS}
    sets = []
    for key, legend in _GROUPS:
        inner = "".join(_input(f) for f in groups[key])
        if key == "cluster":
            inner = (
                '<label for="f-gpu-count">GPUs<input type="number" id="f-gpu-count" name="gpu_count" min="1" '
                'value="8" required inputmode="numeric"></label>'
                f'<label for="f-gpu-kind">GPU kind<select id="f-gpu-kind" name="gpu_kind">{kinds}</select></label>'
                + inner
            )
        sets.append(f'<fieldset><legend>{legend}</legend><div class="fields">{inner}</div></fieldset>')
    body = (
        "<h1>Plan a deployment</h1>"
        '<p class="muted">The options of <code>ppplan plan</code>; empty fields take the planner\'s defaults. '
        "The plan is made through <code>POST /v1/plans</code> and stored.</p>"
        '<form id="plan-form" class="plan-form" novalidate><fieldset><legend>Model</legend><div class="fields">'
        f'<label for="f-model">bundled preset<select id="f-model" name="model">{models}</select></label>'
        '<label for="f-config">or a config.json<input type="file" id="f-config" name="config_file" '
        'accept=".json,application/json"></label></div>'
        '<p class="hint" id="config-note"></p></fieldset>'
        + "".join(sets)
        + '<div class="actions"><button type="submit" class="primary" id="plan-submit">Plan</button>'
        '<span id="status" role="status" aria-live="polite"></span></div>'
        '<p class="hint">Same plan from the command line:</p><pre><code id="cli-command">ppplan plan</code></pre>'
        '<button type="button" class="copy" data-copy="cli-command">Copy command</button>'
        '<ul class="errors" id="form-errors"></ul></form><section id="result" aria-live="polite"></section>'
    )
    return page("New plan", body, active="new")


def plans_page(presets: Sequence[str], gpus: Sequence[str]) -> str:
    """The stored plans with filters; rows come from ``GET /v1/plans`` (``app.js``)."""
    models = '<option value="">any</option>' + "".join(
        f'<option value="{escape(p)}">{escape(p)}</option>' for p in presets
    )
    kinds = '<option value="">any</option>' + "".join(f'<option value="{escape(g)}">{escape(g)}</option>' for g in gpus)
    objectives = '<option value="">any</option>' + "".join(f'<option value="{o}">{o}</option>' for o in OBJECTIVES)
    body = (
        "<h1>Stored plans</h1>"
        '<form id="plans-filter" class="plan-form"><fieldset><legend>Filters</legend><div class="fields">'
        f'<label for="q-model">model<select id="q-model" name="model">{models}</select></label>'
        f'<label for="q-gpu">GPU<select id="q-gpu" name="gpu">{kinds}</select></label>'
        f'<label for="q-objective">objective<select id="q-objective" name="objective">{objectives}</select></label>'
        '<label for="q-after">created on or after<input type="date" id="q-after" name="created_after"></label>'
        '<label for="q-before">created before<input type="date" id="q-before" name="created_before"></label>'
        '</div></fieldset><div class="actions"><button type="submit" class="primary">Filter</button>'
        '<span id="status" role="status" aria-live="polite"></span></div></form>'
        '<div class="table-wrap"><table id="plans-table"><thead><tr><th>id</th><th class="l">created (UTC)</th>'
        '<th class="l">model</th><th class="l">GPUs</th><th class="l">objective</th><th>TP×PP×R</th>'
        "<th>output tok/s</th><th>per GPU</th><th>TPOT ms</th><th>SLO</th></tr></thead><tbody></tbody></table></div>"
        '<div class="actions"><button type="button" id="page-prev" disabled>Newer</button>'
        '<button type="button" id="page-next" disabled>Older</button><span id="page-info" class="muted"></span></div>'
    )
    return page("Stored plans", body, active="plans")


def plan_page(view: str, plan_id: str) -> str:
    """One stored plan: the plan view fragment in a page."""
    return page(f"plan {plan_id}", view)


def message_page(title: str, message: str) -> str:
    """A page with one message (an unknown plan id)."""
    return page(title, f'<h1>{escape(title)}</h1><p id="message">{escape(message)}</p>')

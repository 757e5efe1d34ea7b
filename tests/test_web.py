"""The plan pictures (server-rendered SVG, the self-contained HTML), the pages of ``ppplan serve`` and
``ppplan plans show --svg``: fast checks on the markup, counted through the charts' stable classes and
``data-*`` attributes. The real-browser checks are in test_browser.py."""

from __future__ import annotations

import copy
import json
import math
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from ppplan.api.app import create_app
from ppplan.api.cli import app as cli_app
from ppplan.api.settings import Settings
from ppplan.api.store.migrate import upgrade
from ppplan.api.web import render_html, render_plan_view, render_svgs
from ppplan.api.web.chart_timeline import schedule_bubbles
from ppplan.api.web.data import memory_cuts
from ppplan.api.web.svg import fmt, nice_ticks
from ppplan.partitioner.request import PlanRequest
from ppplan.profiler.resolve import plan_request

NS = "{http://www.w3.org/2000/svg}"
CHART_NAMES = ["memory", "timeline", "tradeoff", "layers"]


@pytest.fixture(scope="module")
def plan() -> dict[str, Any]:
    """Llama-3.1-8B on 4×H100 with PP 4 pinned: the issue's example (about a second to plan)."""
    req = PlanRequest(model="llama-3.1-8b", gpus="4xH100", tp=1, pp=4)
    return plan_request(req).model_dump(mode="json")


@pytest.fixture(scope="module")
def legacy(plan: dict[str, Any]) -> dict[str, Any]:
    """The same plan as a version without schema minor 1 stored it: no units, candidates, baseline stages."""
    old = copy.deepcopy(plan)
    for key in ("units", "candidates", "schema_minor"):
        old.pop(key, None)
    for b in old.get("baselines") or []:
        b.pop("stages", None)
    for p in old.get("pareto") or []:
        p.pop("tokens_per_s_per_user", None)
        p.pop("chosen", None)
    old["metrics"].pop("tokens_per_s_per_user", None)
    old["schedule"].pop("name", None)
    return old


def svg_tree(text: str) -> ET.Element:
    root = ET.fromstring(text)  # raises on anything that is not well-formed XML
    assert root.tag == f"{NS}svg"
    return root


def find(root: ET.Element, tag: str, cls: str, **data: str) -> list[ET.Element]:
    """Elements ``tag`` whose class list holds ``cls`` and whose data-* attributes match ``data``."""
    out = []
    for e in root.iter(f"{NS}{tag}"):
        if cls in (e.get("class") or "").split() and all(
            e.get("data-" + k.replace("_", "-")) == v for k, v in data.items()
        ):
            out.append(e)
    return out


def test_every_chart_is_well_formed_svg(plan: dict[str, Any], legacy: dict[str, Any]) -> None:
    for p in (plan, legacy):
        svgs = render_svgs(p)
        assert list(svgs) == CHART_NAMES
        for name, text in svgs.items():
            root = svg_tree(text)
            assert root.get("id") == f"chart-{name}" and root.get("viewBox")


def test_memory_bars_are_the_stages(plan: dict[str, Any]) -> None:
    root = svg_tree(render_svgs(plan)["memory"])
    pp = plan["degrees"]["pp"]
    assert pp == 4 == len(plan["stages"])
    bars = find(root, "g", "mem-bar")
    groups = find(root, "g", "mem-group")
    assert groups[0].get("data-cut") == "plan"
    for g in groups:  # the plan's cut and each engine default (all with stage memory in this plan)
        assert len(find(g, "g", "mem-bar")) == pp
    assert len(bars) == pp * len(groups) and len(groups) >= 2
    for k, stage in enumerate(plan["stages"]):
        (bar,) = find(groups[0], "g", "mem-bar", stage=str(k))
        parts = {r.get("data-part"): float(r.get("data-gib") or 0) for r in find(bar, "rect", "seg")}
        assert set(parts) == {"weights", "kv", "workspace", "reserve", "free"}
        mem = stage["memory"]
        assert parts["weights"] == pytest.approx(mem["weights_gib"], abs=0.01)
        assert sum(v for k2, v in parts.items() if k2 != "free") == pytest.approx(mem["total_gib"], abs=0.02)
        assert sum(parts.values()) == pytest.approx(mem["limit_gib"], abs=0.03)  # free fills up to the limit
    assert find(root, "line", "limit-line") and find(root, "line", "hbm-line")


def test_engine_default_memory_derived_from_units_matches_reported(plan: dict[str, Any]) -> None:
    """Baseline stage memory rebuilt from per-unit weights and KV equals what the planner reported."""
    derived = copy.deepcopy(plan)
    for b in derived["baselines"]:
        b.pop("stages")
    reported, rebuilt = memory_cuts(plan)[1:], memory_cuts(derived)[1:]
    assert rebuilt and all(c.source == "derived from per-unit memory" for c in rebuilt)
    for a, b in zip(reported, rebuilt, strict=True):
        assert a.stages is not None and b.stages is not None
        for sa, sb in zip(a.stages, b.stages, strict=True):
            assert sb.total == pytest.approx(sa.total, rel=1e-6)


def test_timeline_rows_blocks_and_bubbles(plan: dict[str, Any]) -> None:
    root = svg_tree(render_svgs(plan)["timeline"])
    pp, m = plan["degrees"]["pp"], plan["schedule"]["micro_batches"]
    rows = find(root, "g", "tl-stage")
    assert [r.get("data-stage") for r in rows] == [str(k) for k in range(pp)]
    for r in rows:  # every micro-batch passes every stage once per cycle
        assert sorted(int(b.get("data-micro-batch") or -1) for b in find(r, "g", "mb")) == list(range(m))
        assert 0 < float(r.get("data-utilization") or 0) <= 1
    bubbles = {b.get("data-schedule"): float(b.get("data-bubble") or -1) for b in find(root, "g", "bubble")}
    assert bubbles["steady"] == plan["schedule"]["bubble_fraction"] == 0.0
    assert bubbles["gpipe"] == pytest.approx((pp - 1) / (m + pp - 1), abs=1e-6)
    assert bubbles["interleaved"] < bubbles["gpipe"]
    assert schedule_bubbles(1, 1, 0.0)[1].bubble == 0.0  # one stage: nothing to fill


def test_chosen_point_is_the_plan(plan: dict[str, Any]) -> None:
    root = svg_tree(render_svgs(plan)["tradeoff"])
    points = find(root, "circle", "cand")
    chosen = find(root, "circle", "cand", chosen="true")
    assert len(chosen) == 1 and len(points) >= len(plan["pareto"])
    c, m, deg = chosen[0], plan["metrics"], plan["degrees"]
    assert float(c.get("data-per-gpu") or 0) == m["throughput_per_gpu"]
    assert float(c.get("data-per-user") or 0) == pytest.approx(1000.0 / m["tpot_ms"], rel=1e-9)
    assert (c.get("data-tp"), c.get("data-pp"), c.get("data-batch")) == (
        str(deg["tp"]),
        str(deg["pp"]),
        str(deg["micro_batch_size"]),
    )
    assert "GPUs" in (c.findtext(f"{NS}title") or "")  # hover details without JavaScript
    assert len({(p.get("data-per-gpu"), p.get("data-per-user"), p.get("data-batch")) for p in points}) == len(points)


def test_layer_strip_units_and_cuts(plan: dict[str, Any], legacy: dict[str, Any]) -> None:
    root = svg_tree(render_svgs(plan)["layers"])
    pp = plan["degrees"]["pp"]
    assert len(find(root, "rect", "stage-band")) == pp and len(find(root, "line", "cut")) == pp - 1
    (time_panel,) = find(root, "g", "panel", panel="time")
    units = find(time_panel, "g", "unit")
    assert len(units) == len(plan["units"]) == plan["model"]["num_layers"] + 2
    assert {u.get("data-kind") for u in units} == {"embed", "decoder", "head"}
    old = svg_tree(render_svgs(legacy)["layers"])  # no units: one entry per stage, the same bands
    assert len(find(old, "rect", "stage-band")) == pp
    assert len(find(old, "g", "unit", kind="stage")) == 2 * pp


def test_legacy_plan_draws_with_fallbacks(legacy: dict[str, Any]) -> None:
    svgs = render_svgs(legacy)
    mem = svg_tree(svgs["memory"])
    groups = find(mem, "g", "mem-group")
    assert len(find(groups[0], "g", "mem-bar")) == 4
    assert all(not find(g, "g", "mem-bar") for g in groups[1:])  # engine cuts: no numbers to draw from
    chosen = find(svg_tree(svgs["tradeoff"]), "circle", "cand", chosen="true")
    assert float(chosen[0].get("data-per-user") or 0) == pytest.approx(1000 / legacy["metrics"]["tpot_ms"])


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.refs += [v or "" for k, v in attrs if k in ("src", "href", "action", "srcset", "poster", "data")]


def test_standalone_html_is_self_contained(plan: dict[str, Any]) -> None:
    text = render_html(plan)
    parser = _Refs()
    parser.feed(text)
    assert "link" not in parser.tags and "iframe" not in parser.tags
    assert parser.refs and all(r.startswith(("data:", "#")) for r in parser.refs), parser.refs
    # the only http(s) text is the SVG namespace name, which nothing fetches
    assert text.replace('xmlns="http://www.w3.org/2000/svg"', "").count("http") == 0
    assert "@import" not in text and "url(" not in text
    assert text.count("<svg") == 4 and "<style>" in text and "<script>" in text
    head = parser.refs[0]
    assert head.startswith("data:application/json")
    assert json.loads(unquote(head.split(",", 1)[1])) == plan  # the download is the plan itself
    for engine in ("vllm", "sglang", "trtllm"):
        assert f'id="settings-{engine}"' in text and f'data-copy="settings-{engine}"' in text


def test_text_from_the_plan_is_escaped(plan: dict[str, Any]) -> None:
    evil = copy.deepcopy(plan)
    evil["model"]["name"] = '<img src=x onerror="alert(1)">'
    evil["notes"] = ["</script><script>alert(2)</script>"]
    text = render_html(evil)
    assert "<img src=x" not in text and "<script>alert(2)" not in text
    for svg in render_svgs(evil).values():
        svg_tree(svg)


def test_plan_view_fragment_shows_measurements(plan: dict[str, Any]) -> None:
    rows = [
        {"stage": k, "phase": "decode", "compute_s": 0.001 * (k + 1), "tokens": 8, "micro_batch_size": 8}
        for k in range(4)
    ]
    view = render_plan_view(plan, plan_id="abc", measurements=rows, download_href="/v1/plans/abc/export/json")
    assert view.startswith('<article class="plan-view" id="plan-view" data-plan-id="abc">')
    assert view.count('data-phase="decode"') == 4 and "measured share" in view
    assert "<html" not in view and render_html(plan, standalone=False).startswith("<article")
    empty = render_plan_view(plan, plan_id="abc", measurements=[])
    assert "No measurements stored" in empty


@pytest.fixture
def web(sqlite_url: str) -> Any:
    upgrade(sqlite_url)
    with TestClient(create_app(Settings(database_url=sqlite_url)), base_url="http://127.0.0.1") as c:
        yield c


def test_pages_are_served_with_a_strict_csp(web: TestClient) -> None:
    home = web.get("/")
    assert home.status_code == 200 and home.headers["content-type"].startswith("text/html")
    csp = home.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert 'id="plan-form"' in home.text and 'value="llama-3.1-8b"' in home.text
    assert "<script>" not in home.text and " style=" not in home.text and " onclick" not in home.text
    for name, kind in (("ppplan.css", "text/css"), ("app.js", "text/javascript"), ("copy.js", "text/javascript")):
        r = web.get(f"/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
    assert web.head("/static/app.js").status_code == 200 and web.head("/").status_code == 200
    assert web.get("/static/../app.py").status_code == 404
    assert web.get("/static/secret.txt").status_code == 404
    assert web.get("/plans").status_code == 200
    assert not any(p == "/" or p.startswith(("/plans", "/static")) for p in web.get("/openapi.json").json()["paths"])


def test_plan_page_after_the_api_made_a_plan(web: TestClient) -> None:
    r = web.post("/v1/plans", json={"model": "llama-3.1-8b", "gpus": "4xH100", "tp": 1, "pp": 4})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    page = web.get(f"/plans/{pid}")
    assert page.status_code == 200 and f'data-plan-id="{pid}"' in page.text
    assert all(f'id="chart-{n}"' in page.text for n in CHART_NAMES)
    assert f'href="/v1/plans/{pid}/export/json"' in page.text and "No measurements stored" in page.text
    view = web.get(f"/plans/{pid}/view")
    assert view.status_code == 200 and view.text.startswith("<article")
    missing = web.get("/plans/0000000000000000")
    assert missing.status_code == 404 and "no stored plan" in missing.text
    assert web.get("/plans/0000000000000000/view").status_code == 404


def test_pages_need_the_token_when_one_is_set(sqlite_url: str) -> None:
    upgrade(sqlite_url)
    app = create_app(Settings(database_url=sqlite_url, api_token="s3cret-token"))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        for path in ("/", "/plans", "/static/app.js", "/plans/abc"):
            assert c.get(path).status_code == 401
        assert c.get("/", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert c.get("/", headers={"Host": "evil.example"}).status_code == 400


def test_cli_writes_one_svg_per_chart(tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(cli_app, ["plan", "llama-3.1-8b", "--gpus", "4xH100", "--tp", "1", "--pp", "4"])
    assert made.exit_code == 0, made.stdout
    pid = next(line.split()[-1] for line in made.stdout.splitlines() if line.startswith("plan id:"))
    out = tmp_path / "charts" / "new"
    res = runner.invoke(cli_app, ["plans", "show", pid, "--svg", str(out)])
    assert res.exit_code == 0, res.stdout + res.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.svg" for n in CHART_NAMES)
    for name in CHART_NAMES:
        svg_tree((out / f"{name}.svg").read_text())
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for target in (blocker, blocker / "sub"):  # a file in the way; a folder that cannot be created
        bad = runner.invoke(cli_app, ["plans", "show", pid, "--svg", str(target)])
        assert bad.exit_code == 2 and "svg:" in bad.stderr and "Traceback" not in bad.stderr
    unknown = runner.invoke(cli_app, ["plans", "show", "0000000000000000", "--svg", str(out)])
    assert unknown.exit_code == 2 and "no stored plan" in unknown.stderr


def test_nice_number_formatting() -> None:
    assert fmt(2.50) == "2.5" and fmt(3.0) == "3" and fmt(math.nan) == "0"
    assert nice_ticks(72.0) == [0, 20, 40, 60, 80] and nice_ticks(0) == [0.0, 1.0]


def test_a_page_answers_405_with_its_methods() -> None:
    client = TestClient(create_app(), base_url="http://127.0.0.1")
    for path in ("/", "/plans"):
        res = client.post(path)
        assert res.status_code == 405 and res.headers["allow"] == "GET, HEAD"

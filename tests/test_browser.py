"""The plan pages in a real browser: Debian's Chromium and chromedriver (``/usr/bin/chromium``,
``/usr/bin/chromedriver``; ``.ci/run`` installs them, nothing is downloaded at test time) driven by
selenium, headless, against ``ppplan serve``'s app in a subprocess on 127.0.0.1.

Without the browser the tests skip locally and fail under ``CI=true``. Screenshots go to pytest's
temporary folder; the path is printed (``pytest -s`` shows it)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ppplan.api.liveserver import live_server
from ppplan.api.store.engine import dispose_engine
from ppplan.api.store.migrate import upgrade

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
SIZES = ((1280, 800), (390, 844))


def _missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return (
                f"browser tests need Debian's chromium and chromium-driver ({path} is missing; .ci/run installs them)"
            )
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "browser tests need selenium (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium with a fresh profile, its console log kept (goog:loggingPrefs)."""
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason + " — CI=true, so this is a failure, not a skip")
        pytest.skip(reason)
    from selenium import webdriver  # lazy: only when the browser is there
    from selenium.webdriver.chrome.service import Service  # lazy: only when the browser is there

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.add_argument("--window-size=1280,800")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = f"sqlite:///{tmp_path_factory.mktemp('browser-store') / 'ppplan.db'}"
    upgrade(url)
    dispose_engine(url)
    with live_server(url) as base:
        yield base


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("screenshots")
    print(f"\nbrowser screenshots: {folder}")
    return folder


def viewport(driver: Any, width: int, height: int) -> None:
    """Set the page's viewport exactly (a headless window's outer size is not its viewport)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )


def console_errors(driver: Any) -> list[str]:
    """Console messages of level SEVERE since the last call (errors, CSP violations, failed loads)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def wait_for(driver: Any, script: str, timeout_s: float = 60.0) -> Any:
    """Poll ``script`` (JavaScript returning a value) until it is truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {script}")
        time.sleep(0.1)


CHART_COUNTS = """
const q = (s) => document.querySelectorAll(s);
const chosen = q('#chart-tradeoff circle.cand[data-chosen="true"]');
const bars = Array.from(q('#chart-memory g.mem-group[data-cut="plan"] g.mem-bar'));
return {
  memory: bars.length,
  drawn: bars.filter((b) => b.getBBox().width > 0 && b.getBBox().height > 0).length,
  timeline: q('#chart-timeline g.tl-stage').length,
  layers: q('#chart-layers rect.stage-band').length,
  chosen: chosen.length,
  chosen_pp: chosen.length ? chosen[0].dataset.pp : null,
  per_gpu: chosen.length ? Number(chosen[0].dataset.perGpu) : null,
  per_user: chosen.length ? Number(chosen[0].dataset.perUser) : null,
  overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
};
"""


def check_plan_page(driver: Any, plan: dict[str, Any], shot: Path) -> None:
    got = driver.execute_script(CHART_COUNTS)
    metrics = plan["metrics"]
    assert got["memory"] == got["drawn"] == got["timeline"] == got["layers"] == 4, got
    assert got["chosen"] == 1 and got["chosen_pp"] == "4", got
    assert got["per_gpu"] == pytest.approx(metrics["throughput_per_gpu"], rel=1e-12)
    assert got["per_user"] == pytest.approx(1000.0 / metrics["tpot_ms"], rel=1e-9)
    assert got["overflow"] <= 0, f"the page scrolls sideways by {got['overflow']} px"
    driver.save_screenshot(str(shot))


def test_plan_through_the_form(browser: Any, server: str, shots: Path) -> None:
    """Fill the form for Llama-3.1-8B on 4×H100 with TP 1 and PP 4 pinned, submit, check the charts."""
    from selenium.webdriver.common.by import By  # lazy: only when the browser is there
    from selenium.webdriver.support.ui import Select  # lazy: only when the browser is there

    viewport(browser, *SIZES[0])
    browser.get(server + "/")
    Select(browser.find_element(By.ID, "f-model")).select_by_value("llama-3.1-8b")
    Select(browser.find_element(By.ID, "f-gpu-kind")).select_by_value("H100-SXM-80GB")
    for field, value in (("f-gpu-count", "4"), ("f-tp", "1"), ("f-pp", "4")):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    command = browser.find_element(By.ID, "cli-command").text
    assert "--gpus 4xH100-SXM-80GB" in command and "--tp 1 --pp 4" in command
    browser.save_screenshot(str(shots / "form-filled-1280x800.png"))
    browser.find_element(By.ID, "plan-submit").click()
    wait_for(browser, "return document.querySelector('#result #plan-view') !== null")
    plan_id = browser.execute_script("return document.querySelector('#plan-view').dataset.planId")
    assert browser.current_url.endswith(f"/plans/{plan_id}")
    plan = httpx.get(f"{server}/v1/plans/{plan_id}", timeout=30).json()["plan"]
    assert plan["degrees"]["tp"] == 1 and plan["degrees"]["pp"] == 4 and plan["cluster"]["count"] == 4
    check_plan_page(browser, plan, shots / "form-1280x800.png")
    copy = browser.find_element(By.CSS_SELECTOR, 'button[data-copy="settings-vllm"]')
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", copy)
    copy.click()
    wait_for(browser, "return document.querySelector('button[data-copy=\"settings-vllm\"]').textContent !== 'Copy'", 10)
    assert console_errors(browser) == []

    for width, height in SIZES:  # the stored plan's own page, at both sizes
        viewport(browser, width, height)
        browser.get(f"{server}/plans/{plan_id}")
        check_plan_page(browser, plan, shots / f"plan-{width}x{height}.png")
        assert console_errors(browser) == []
    browser.get(server + "/")  # the form itself on a phone
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    browser.save_screenshot(str(shots / "form-390x844.png"))
    assert console_errors(browser) == []


def test_an_uploaded_config_is_planned(browser: Any, server: str, shots: Path, tmp_path: Path) -> None:
    """A config.json chosen in the form is sent as hf_config and planned like a preset."""
    from selenium.webdriver.common.by import By  # lazy: only when the browser is there

    from ppplan.profiler.configs import load_model_config

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({**load_model_config("tiny-llama").raw, "_name_or_path": "acme/tiny-uploaded"}))
    viewport(browser, *SIZES[0])
    browser.get(server + "/")
    browser.find_element(By.ID, "f-config").send_keys(str(cfg))
    wait_for(browser, "return document.getElementById('config-note').textContent.includes('hf_config')", 10)
    browser.find_element(By.ID, "plan-submit").click()
    wait_for(browser, "return document.querySelector('#result #plan-view') !== null")
    plan_id = browser.execute_script("return document.querySelector('#plan-view').dataset.planId")
    plan = httpx.get(f"{server}/v1/plans/{plan_id}", timeout=30).json()["plan"]
    assert plan["model"]["name"] == "tiny-uploaded" and plan["model_source"].startswith("inline:")
    assert "acme/tiny-uploaded" in plan["exports"]["vllm"]["command"]
    browser.save_screenshot(str(shots / "uploaded-config-1280x800.png"))
    assert console_errors(browser) == []


def test_stored_plans_list_and_filters(browser: Any, server: str, shots: Path) -> None:
    made = httpx.post(f"{server}/v1/plans", json={"model": "tiny-llama", "gpus": "2xH100"}, timeout=60)
    assert made.status_code in (200, 201), made.text
    plan_id = made.json()["id"]
    for width, height in SIZES:
        viewport(browser, width, height)
        browser.get(server + "/plans")
        rows = wait_for(
            browser, "const r = document.querySelectorAll('#plans-table tbody tr'); return r.length && r.length"
        )
        assert rows >= 1
        assert browser.execute_script(f"return !!document.querySelector('tr[data-plan-id=\"{plan_id}\"] a')")
        assert (
            browser.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
            <= 0
        )
        browser.save_screenshot(str(shots / f"plans-{width}x{height}.png"))
    browser.get(server + "/plans?model=tiny-llama")  # a filter from the address bar
    wait_for(browser, "return document.querySelector('#page-info').textContent.includes('of')")
    models = browser.execute_script(
        "return Array.from(document.querySelectorAll('#plans-table tbody tr td:nth-child(3)')).map(t => t.textContent)"
    )
    assert models and set(models) == {"tiny-llama"}
    browser.get(server + "/plans?created_after=2000-01-01&created_before=2999-01-01")  # dates reach the API
    wait_for(browser, "return document.querySelector('#page-info').textContent.includes(' of ')")
    browser.get(server + "/plans?objective=min-gpus")
    wait_for(browser, "return document.querySelector('#page-info').textContent === 'no plans match'")
    assert console_errors(browser) == []

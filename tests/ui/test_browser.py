"""The dashboard in a real browser: `streamlit run` + headless Chromium over CDP, against the seeded API.

Opens a seeded run's page, changes beta in the OPD mixing panel, applies, sees the change pending, checks
the API saved it, and saves a screenshot to test-artifacts/run-page.png.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.ui.cdp import Browser, find_chromium
from tests.ui.conftest import REPO, ApiProcess, _stop, free_port, wait_until
from ui.launch import command

ARTIFACT = REPO / "test-artifacts" / "run-page.png"
BETA_INPUT = 'input[aria-label="beta (all experts)"]'

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = find_chromium()
    if exe is None:
        msg = "chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; CI is set, so this is an error")
        pytest.skip(msg)
    return exe


@pytest.fixture(scope="module")
def dashboard(api_server: ApiProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`streamlit run ui/app.py` (the command `copd ui` execs) on a free port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COPD_")}
    env.update(COPD_API_URL=api_server.url, COPD_API_TOKEN=api_server.token, COPD_UI_REFRESH_S="2")
    log_path = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*command(port), "--server.fileWatcherType", "none"], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited: {log_path.read_text()[-2000:]}")
            return httpx.get(f"{url}/_stcore/health", timeout=2).text.strip() == "ok"
        wait_until(up, 60, "streamlit to answer /_stcore/health")
        yield url
    finally:
        _stop(proc)


def _settled(b: Browser) -> bool:
    """Charts drawn, nothing stale (no rerun in flight)."""
    return b.js("""(() => {
        const charts = document.querySelectorAll('.vega-embed canvas, .vega-embed svg.marks');
        const stale = document.querySelectorAll('[data-stale="true"]').length;
        return charts.length >= 3 && stale === 0;
    })()""")


def test_change_beta_in_the_browser(chromium: str, dashboard: str, api_server: ApiProcess,
                                    tmp_path: Path) -> None:
    run_id = api_server.ids["copd-live"]
    with api_server.http() as http:
        before = http.get(f"/runs/{run_id}/knobs").json()
    new_beta = 0.35 if before["values"]["beta"] != 0.35 else 0.45
    browser = Browser(tmp_path / "profile", width=1400, height=2200)
    try:
        browser.open(f"{dashboard}/run?run={run_id}")
        wait_until(lambda: browser.js(f"!!document.querySelector('{BETA_INPUT}')"), 60, "the OPD mixing panel")
        wait_until(lambda: _settled(browser), 60, "the charts to draw")
        assert "copd-live" in browser.js("document.body.innerText")

        # Type the new beta and commit it (Enter), as a user would.
        browser.js(f"(() => {{ const el = document.querySelector('{BETA_INPUT}'); el.focus(); el.select(); }})()")
        browser.type_text(str(new_beta))
        browser.press_enter()
        apply = """[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Apply')"""
        wait_until(lambda: browser.js(f"(() => {{ const b = {apply}; return !!b && !b.disabled; }})()"), 30,
                   "the Apply button to enable")
        browser.js(f"{apply}.click()")

        pending = f"Version {before['version'] + 1} is pending"
        wait_until(lambda: pending in browser.js("document.body.innerText"), 30, f"'{pending}' on the page")
        with api_server.http() as http:
            after = http.get(f"/runs/{run_id}/knobs").json()
        assert after["version"] == before["version"] + 1
        assert after["values"]["beta"] == pytest.approx(new_beta)
        assert after["history"][-1]["applied"] is None, json.dumps(after["history"][-1])

        wait_until(lambda: _settled(browser), 30, "the page to settle")
        browser.js("window.scrollTo(0, 0)")
        browser.screenshot(ARTIFACT)
        assert ARTIFACT.stat().st_size > 10_000
    except BaseException:
        browser.screenshot(ARTIFACT.with_name("run-page-failure.png"))  # what the page looked like
        raise
    finally:
        browser.close()


def test_engine_tab_in_the_browser(chromium: str, dashboard: str, api_server: ApiProcess, tmp_path: Path) -> None:
    """The Engine & memory tab draws the logprob-gap and memory series (screenshot: test-artifacts/engine-tab.png)."""
    run_id = api_server.ids["copd-live"]
    browser = Browser(tmp_path / "profile", width=1400, height=1400)
    shot = ARTIFACT.with_name("engine-tab.png")
    tab = """[...document.querySelectorAll('[role="tab"]')].find(b => b.innerText.includes('Engine & memory'))"""
    try:
        browser.open(f"{dashboard}/run?run={run_id}")
        wait_until(lambda: browser.js(f"!!{tab}"), 60, "the Engine & memory tab")
        wait_until(lambda: _settled(browser), 60, "the charts to draw")
        browser.js(f"{tab}.click()")
        visible = """(() => {
            const panel = [...document.querySelectorAll('[role="tabpanel"]')].find(p => p.offsetParent !== null &&
                p.innerText.includes('rollout/logp_gap: mean'));
            return !!panel && panel.querySelectorAll('.vega-embed canvas, .vega-embed svg.marks').length >= 2;
        })()"""
        wait_until(lambda: browser.js(visible), 30, "two charts in the Engine & memory tab")
        browser.js(f"{tab}.scrollIntoView()")
        browser.screenshot(shot)
        assert shot.stat().st_size > 10_000
    except BaseException:
        browser.screenshot(shot.with_name("engine-tab-failure.png"))
        raise
    finally:
        browser.close()

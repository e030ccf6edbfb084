"""UI tests against a real API process: a migrated temporary SQLite database, uvicorn in a subprocess, seeded data.

The dashboard is driven with Streamlit's AppTest in this process (it reaches the API over HTTP, as in
production); the browser test runs `streamlit run` and headless Chromium against the same API.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.ui.seed import seed_all

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "ui" / "app.py"
TOKEN = "ui-test-admin-token-0123456789abcdef"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives headless Chromium; skipped without it unless CI is set")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str, interval: float = 0.1):
    """Poll `check()` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except Exception as err:  # noqa: BLE001 - keep polling; report the last failure
            last_err = err
        time.sleep(interval)
    why = f" (last error: {last_err!r})" if last_err else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{why}")


@dataclass
class ApiProcess:
    url: str
    token: str
    ids: dict[str, int]
    data_dir: Path

    def http(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=f"{self.url}/api/v1", timeout=30,
                            headers={"Authorization": f"Bearer {token or self.token}"})


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """The real API (uvicorn subprocess) over a migrated temp SQLite DB, seeded over REST."""
    from server.db import upgrade

    data_dir = tmp_path_factory.mktemp("copd-data")
    db_url = f"sqlite:///{data_dir / 'copd.db'}"
    upgrade(db_url)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COPD_")}
    # No COPD_BROKER_URL: `start` dispatches to the embedded filesystem broker in data_dir (no worker reads it).
    env.update(COPD_DATA_DIR=str(data_dir), COPD_DATABASE_URL=db_url, COPD_API_TOKEN=TOKEN, COPD_REAPER_INTERVAL_S="0")
    log = open(data_dir / "api.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "server.app:create_app", "--host",
                             "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"API exited: {(data_dir / 'api.log').read_text()[-2000:]}")
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        wait_until(up, 60, "the API to answer /healthz")
        with httpx.Client(base_url=f"{url}/api/v1", timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            ids = seed_all(http)
        yield ApiProcess(url=url, token=TOKEN, ids=ids, data_dir=data_dir)
    finally:
        _stop(proc)
        log.close()


@pytest.fixture
def ui_env(api_server: ApiProcess, monkeypatch: pytest.MonkeyPatch) -> ApiProcess:
    """The dashboard (in this process) pointed at the test API."""
    monkeypatch.setenv("COPD_API_URL", api_server.url)
    monkeypatch.setenv("COPD_API_TOKEN", api_server.token)
    return api_server


@pytest.fixture
def dead_url() -> str:
    """A loopback URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def open_page(page: str | None = None, timeout: float = 60, **query: str):
    """The dashboard in AppTest, on `page` (a file in ui/views/, without .py) with query parameters."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=timeout).run()
    if page is not None:
        at.switch_page(f"views/{page}.py")
        at.query_params.update(query)
        at.run()
    return at


def shown(at, *kinds: str) -> str:
    """All text of these element kinds (default: messages, markdown, captions), one per line."""
    kinds = kinds or ("error", "warning", "info", "success", "markdown", "caption", "title", "header")
    return "\n".join(str(e.value) for k in kinds for e in getattr(at, k))


def no_traceback(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def button(at, label: str):
    """The one button with this label."""
    found = [b for b in at.button if b.label == label]
    assert len(found) == 1, f"{len(found)} buttons labelled {label!r}: {[b.label for b in at.button]}"
    return found[0]

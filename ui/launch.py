"""`copd ui --port P`: run the dashboard with Streamlit (replaces the current process)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"


def command(port: int, host: str = "127.0.0.1") -> list[str]:
    """The `streamlit run` command line for the dashboard."""
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
            "--server.address", host, "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "viewer"]  # no developer menu / Deploy button in an operations dashboard


def run(port: int, host: str = "127.0.0.1") -> None:
    """Exec Streamlit on `host:port`; the API URL and token come from COPD_API_URL / COPD_API_TOKEN."""
    cmd = command(port, host)
    print(f"copd dashboard on http://{host}:{port}", flush=True)
    os.execv(cmd[0], cmd)

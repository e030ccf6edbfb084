"""`copd up`: the API, one worker and the dashboard as child processes, stopped together on Ctrl-C.

Children run in their own sessions, so the terminal's Ctrl-C reaches only this supervisor, which then
stops them in order: the worker first (a warm shutdown: the unit in progress stops at its next step
boundary and its message goes back to the queue, so the next `copd up` continues the run), then the
dashboard, then the API. Their output goes to `<data_dir>/logs/<name>.log`.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

STOP_GRACE_S = {"worker": 60.0, "ui": 10.0, "api": 15.0}  # seconds before SIGKILL
STOP_ORDER = ("worker", "ui", "api")


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen | None = None
    log: IO[bytes] | None = field(default=None, repr=False)

    def start(self, env: dict[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> int | None:
        """SIGTERM (warm shutdown), then SIGKILL after the grace period; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE_S.get(self.name, 10.0))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not None:
            self.log.close()
        return self.proc.returncode


def copd_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "copd.cli", *args]


def wait_healthy(url: str, children: list[Child], timeout_s: float = 120.0) -> None:
    """Until GET /healthz answers; RuntimeError naming a child that exited or the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for c in children:
            if c.exited() is not None:
                raise RuntimeError(f"{c.name} exited with code {c.exited()} during start; see {c.log_path}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the API did not answer at {url}/healthz within {timeout_s:.0f} s")


def run_stack(children: list[Child], env: dict[str, str], api_url: str, banner) -> int:
    """Start, wait for the API, print the banner, supervise until Ctrl-C (or SIGTERM) or a child exits."""
    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    previous_int = signal.signal(signal.SIGINT, on_term)  # also when started with SIGINT ignored (`&` in a script)
    code = 0
    try:
        for c in children:
            c.start(env)
        wait_healthy(api_url, children)
        banner()
        while True:
            dead = [c for c in children if c.exited() is not None]
            if dead:
                c = dead[0]
                print(f"error: {c.name} exited with code {c.exited()}; see {c.log_path}. Stopping.", file=sys.stderr)
                code = 1
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping: worker (finishes its current step), dashboard, API … (Ctrl-C again to kill them now)",
              file=sys.stderr, flush=True)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        code = 1
    finally:
        def hurry(*_: object) -> None:  # a second Ctrl-C: kill everything now
            for c in children:
                if c.proc is not None and c.proc.poll() is None:
                    c.proc.kill()

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, hurry)
        by_name = {c.name: c for c in children}
        for name in STOP_ORDER:
            if name in by_name:
                by_name[name].stop()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    if code == 0:
        print("stopped.", file=sys.stderr)
    return code


def ui_entry() -> Path | None:
    """The dashboard's Streamlit entry point, when the dashboard is installed."""
    try:
        from ui.launch import APP
    except ImportError:
        return None
    return APP if APP.exists() else None


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def hide_password(url: str) -> str:
    """`redis://:secret@host/0` → `redis://:***@host/0` (for printing)."""
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)


def child_env(api_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["COPD_API_URL"] = api_url
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env

"""PostgreSQL and Redis servers of a test's own, on spare ports, that the test may stop, kill and restart.

The shared services (127.0.0.1:5432 and :6379) are never restarted by a test; a test that injects a fault
starts its own here. PostgreSQL's binaries are found under /usr/lib/postgresql/*/bin (or on PATH); as root,
the server runs as the `postgres` user (PostgreSQL refuses to run as root). Missing binaries skip the test.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or ([shutil.which(name)] if shutil.which(name) else [])
    if not found:
        pytest.skip(f"PostgreSQL's {name} is not installed")
    return found[-1]


def _wait_port(port: int, timeout: float, up: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} did not go {'up' if up else 'down'} within {timeout:.0f} s")


class OwnPostgres:
    """`initdb` into a fresh folder, `pg_ctl start` on a spare port; trust auth for user postgres."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="copd-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        self.start()

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = list(argv)
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {res.stdout}{res.stderr}")
        return res

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-o", opts, "-w",
                  "-t", "60", "start")
        _wait_port(self.port, 60)

    def stop(self, mode: str = "fast") -> None:
        """`fast`: clients are disconnected, like a restart by the operator; `immediate`: like a crash."""
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)
        _wait_port(self.port, 30, up=False)

    def restart(self, down_s: float = 0.2) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class OwnRedis:
    """`redis-server` on a spare port, no persistence: a restart loses every queued message and result."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        self.root = Path(tempfile.mkdtemp(prefix="copd-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                                      "--appendonly", "no", "--dir", str(self.root)],
                                     stdout=open(self.root / "log", "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        _wait_port(self.port, 30)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        _wait_port(self.port, 30, up=False)

    def restart(self, down_s: float = 0.2) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

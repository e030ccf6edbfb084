"""A real HTTP receiver on a free loopback port, for webhook alerts."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class Receiver:
    """Records every POSTed JSON body; answers `fail_first` requests with 500 (then 200)."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.attempts = 0
        self.fail_first = 0
        self.status = 200
        self._cv = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer._cv:
                    outer.attempts += 1
                    code = 500 if outer.attempts <= outer.fail_first else outer.status
                    if code == 200:
                        outer.bodies.append(json.loads(body))
                    outer._cv.notify_all()
                self.send_response(code)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def texts(self) -> list[str]:
        return [b["text"] for b in self.bodies]

    def wait_for(self, n: int, timeout: float = 30.0) -> list[str]:
        """The texts once `n` have arrived (or what arrived by the timeout)."""
        with self._cv:
            self._cv.wait_for(lambda: len(self.bodies) >= n, timeout=timeout)
        return self.texts()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def wandb_offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")

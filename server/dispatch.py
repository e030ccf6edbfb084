"""The one place the server hands work to Celery (by task name; the server never imports worker code)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from copd.settings import Settings


class Dispatcher(Protocol):
    """Sends a task by name; raises when the broker cannot take it."""

    def send(self, task_name: str, **kwargs: Any) -> None: ...


# Where tasks go: training units on `gpu`; joins and bookkeeping (`copd.advance`, Celery's chord_unlock) on
# `light`. Server and workers must agree, or `copd.advance` would wait in a queue no worker reads.
TASK_QUEUES: dict[str, Any] = {"task_default_queue": "light", "task_routes": {"copd.run_unit": {"queue": "gpu"}}}


# kombu's filesystem transport with atomic writes and claims (see copd/fsbroker.py for the race it fixes).
EMBEDDED_TRANSPORT = "copd.fsbroker:Transport"


def broker_config(settings: Settings) -> dict[str, Any]:
    """Celery broker settings for server and workers alike.

    Includes the task routes (TASK_QUEUES). Unset COPD_BROKER_URL means the embedded `filesystem://`
    broker under <data_dir>/broker. kombu writes a message to `data_folder_out` and reads from
    `data_folder_in`; a Celery worker both consumes and sends (a chord's join), so one configuration for
    everyone needs the two to be the same folder.
    """
    if settings.broker_url:
        return {"broker_url": settings.broker_url, **TASK_QUEUES}
    root = settings.data_dir / "broker"
    folders = {"queue": root / "queue", "processed": root / "processed", "control": root / "control"}
    for p in folders.values():
        p.mkdir(parents=True, exist_ok=True)
    return {
        "broker_url": "filesystem://",
        "broker_transport": EMBEDDED_TRANSPORT,
        "broker_transport_options": {
            "data_folder_in": str(folders["queue"]),
            "data_folder_out": str(folders["queue"]),
            "processed_folder": str(folders["processed"]),
            "store_processed": False,
            "control_folder": str(folders["control"]),
        },
        **TASK_QUEUES,
    }


class CeleryDispatcher:
    """Sends tasks through Celery's `send_task`; celery is imported on first use, not at server start."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._app: Any = None
        self._lock = threading.Lock()

    def _celery(self) -> Any:
        with self._lock:
            if self._app is None:
                from celery import Celery

                self._app = Celery("copd-server")
                self._app.conf.update(broker_config(self._settings), task_ignore_result=True)
            return self._app

    def send(self, task_name: str, **kwargs: Any) -> None:
        self._celery().send_task(task_name, kwargs=kwargs)


@dataclass
class RecordingDispatcher:
    """For tests: remembers what would have been sent; `fail` makes `send` raise like a broker that is down."""

    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail: bool = False

    def send(self, task_name: str, **kwargs: Any) -> None:
        if self.fail:
            raise ConnectionError("broker unreachable (RecordingDispatcher.fail)")
        self.sent.append((task_name, kwargs))

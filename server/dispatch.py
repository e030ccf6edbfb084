"""The one place the server hands work to Celery (by task name; the server never imports worker code)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from contract.broker import EMBEDDED_TRANSPORT, TASK_QUEUES, broker_config  # noqa: F401  (re-exported)
from contract.settings import Settings


WORK_QUEUES = ("gpu", "light")


class Dispatcher(Protocol):
    """Sends a task by name; raises when the broker cannot take it. `pending()`: messages waiting in the
    work queues, None when the broker cannot say."""

    def send(self, task_name: str, **kwargs: Any) -> None: ...

    def pending(self) -> int | None: ...


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

    def pending(self) -> int | None:
        """Messages waiting in the gpu and light queues (a queue the broker does not know holds none)."""
        from kombu.exceptions import ChannelError

        try:
            with self._celery().connection_for_read() as conn:
                conn.ensure_connection(max_retries=1)
                total = 0
                for queue in WORK_QUEUES:
                    try:
                        total += conn.default_channel.queue_declare(queue, passive=True).message_count
                    except ChannelError:  # not declared (yet, or since a broker restart): empty
                        pass
                return total
        except Exception:  # noqa: BLE001 - the broker is down or unreachable: unknown
            return None


@dataclass
class RecordingDispatcher:
    """For tests: remembers what would have been sent; `fail` makes `send` raise like a broker that is down."""

    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail: bool = False
    queued: int | None = 0  # what pending() answers

    def send(self, task_name: str, **kwargs: Any) -> None:
        if self.fail:
            raise ConnectionError("broker unreachable (RecordingDispatcher.fail)")
        self.sent.append((task_name, kwargs))

    def pending(self) -> int | None:
        return self.queued

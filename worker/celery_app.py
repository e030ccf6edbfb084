"""The Celery app of the workers: `celery -A worker.celery_app worker` (or `copd worker`)."""

from __future__ import annotations

import logging
import threading

from celery import Celery
from celery.signals import worker_shutting_down

from contract.settings import get_settings
from worker.config import WorkerSettings, celery_config

logging.getLogger("httpx").setLevel(logging.WARNING)  # an INFO line per request would drown the worker's log
# kombu warns on every connection of the folder broker that `filesystem://` names no host; it needs none.
logging.getLogger("kombu.connection").addFilter(lambda r: not r.getMessage().startswith("No hostname was supplied"))

app = Celery("copd", include=["worker.tasks"])
app.conf.update(celery_config(get_settings(), WorkerSettings()))

# Set on the worker's first TERM/INT/QUIT: a unit stops at its next step boundary and puts its message back.
SHUTTING_DOWN = threading.Event()


@worker_shutting_down.connect
def _on_shutdown(**_: object) -> None:
    SHUTTING_DOWN.set()

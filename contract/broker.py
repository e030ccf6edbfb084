"""What the server and the workers must agree on about Celery: task names, queues, the broker settings.

Torch-free and Celery-free (plain settings dicts): the server dispatches by task name and never imports
worker code; the workers build their Celery app from the same `broker_config`.
"""

from __future__ import annotations

from typing import Any

from contract.settings import Settings

# Task names (worker/tasks.py registers them; the server sends them by name).
ADVANCE_TASK = "copd.advance"    # a run's join: decides and enqueues the next phase
RUN_UNIT_TASK = "copd.run_unit"  # one (run, expert, cycle, phase) unit

# Where tasks go: training units on `gpu`; joins and bookkeeping (`copd.advance`, Celery's chord_unlock) on
# `light`. Server and workers must agree, or `copd.advance` would wait in a queue no worker reads.
TASK_QUEUES: dict[str, Any] = {"task_default_queue": "light", "task_routes": {RUN_UNIT_TASK: {"queue": "gpu"}}}


# kombu's filesystem transport with atomic writes and claims (contract/fsbroker.py says which race it fixes).
# kombu imports it by this name; `copd.fsbroker` re-exports it, and the name stays so that workers and
# servers of the previous release, sharing one broker folder, keep agreeing.
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

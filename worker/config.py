"""Celery configuration of the workers: the server's broker settings plus what long GPU units need."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.settings import Settings
from contract.broker import broker_config


class WorkerSettings(BaseSettings):
    """Worker-only COPD_* variables (the shared ones are in contract.settings)."""

    model_config = SettingsConfigDict(env_prefix="COPD_", extra="ignore")

    result_backend: str | None = Field(None, description="Celery result backend (chord joins); default redis when "
                                       "the broker is redis, else db+sqlite:///<data_dir>/celery-results.sqlite.")
    visibility_timeout_s: float = Field(6 * 3600.0, gt=0, description="Redis: an unacknowledged unit is "
                                        "redelivered after this long; keep it well above the longest unit.")
    heartbeat_interval_s: float = Field(5.0, gt=0, description="Seconds between a running unit's heartbeats.")
    stop_check_s: float = Field(1.0, ge=0, description="How stale the cached run status may be when a step "
                                "boundary asks whether the run was cancelled.")
    lease_ttl_s: float = Field(30.0, gt=0, description="With a checkpoint store: a unit's lease lapses when its "
                               "holder's last heartbeat is older than this (another host then takes the unit over); "
                               "keep it several heartbeat intervals long.")
    api_retry_s: float = Field(120.0, ge=0, description="How long a worker waits for an unreachable API.")
    step_delay_s: float = Field(0.0, ge=0, description="Testing aid: sleep this long after every step but a "
                                "unit's last (widens the window in which a test kills a worker mid-unit).")


def result_backend(settings: Settings, worker: WorkerSettings) -> str:
    """The chord joins' result store (see WorkerSettings.result_backend)."""
    if worker.result_backend:
        return worker.result_backend
    if settings.broker_url and settings.broker_url.startswith(("redis://", "rediss://")):
        return settings.broker_url
    return f"db+sqlite:///{settings.data_dir / 'celery-results.sqlite'}"


def celery_config(settings: Settings, worker: WorkerSettings) -> dict[str, Any]:
    """Late acks, one unit at a time, a long visibility timeout, routes and a result backend for chords."""
    conf = broker_config(settings)  # broker URL, transport folders and task routes: the same as the server's
    embedded = not settings.broker_url
    options = dict(conf.get("broker_transport_options", {}))
    options["visibility_timeout"] = worker.visibility_timeout_s
    if embedded:
        options.setdefault("polling_interval", 0.2)  # seconds between looks at the queue folder
    conf.update(
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        result_backend=result_backend(settings, worker),
        task_acks_late=True,                 # a unit's message is acknowledged only when the unit is over,
        task_reject_on_worker_lost=True,     # and requeued when the process running it dies
        worker_prefetch_multiplier=1,        # hold no unit that another GPU could start
        worker_concurrency=1,
        worker_pool="solo",                  # the unit runs in the worker process: one GPU, one unit
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_chord_retry_interval=1.0,     # seconds between chord_unlock polls (database result backend)
        worker_enable_remote_control=not embedded,  # no broadcast queues in the folder broker
    )
    return conf

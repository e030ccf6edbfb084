"""`copd train`'s trackers and alerts: the reporter's metrics and events, through the API's exporter code.

The trackers write into the run folder unless the settings say where (DIR/tensorboard, DIR/mlflow.db,
DIR/wandb); the outbox is DIR/exports/, so `--resume` continues the same tracker runs and delivers what a
tracker that was down did not get.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Callable

from contract.settings import get_settings
from contract.spec import RunSpec
from integrations.alerts import Webhooks
from integrations.runs import RunIntegrations, open_run_integrations
from integrations.trackers import Point


class LocalIntegrations:
    """The sink a JsonlReporter tells every metric and event (see trainer/reporter.py)."""

    def __init__(self, ri: RunIntegrations, report: Callable[[str, str], None]):
        self.ri = ri
        self.report = report
        self.hooks = Webhooks(lambda level, message: self.report(level, message)) if ri.alerts else None

    @classmethod
    def open(cls, spec: RunSpec, out: Path) -> "LocalIntegrations | None":
        """The run's integrations, or None when it has neither trackers nor webhooks."""
        out = Path(out).resolve()
        key = "local-" + hashlib.sha256(f"{out}|{spec.name}".encode()).hexdigest()[:12]
        holder: list[Callable[[str, str], None]] = [lambda level, message: None]
        ri = open_run_integrations(spec, get_settings(), key=key, link=str(out), root=out, state=out / "exports",
                                   report=lambda level, message: holder[0](level, message))
        if ri.exporter is None and ri.alerts is None:
            return None
        sink = cls(ri, lambda level, message: None)
        holder[0] = lambda level, message: sink.report(level, message)
        return sink

    def metrics(self, expert: str | None, cycle: int, step: int, values: dict[str, float]) -> None:
        now = time.time()
        points = [Point(expert, k, int(step), float(v), now, cycle) for k, v in values.items()]
        if self.ri.exporter is not None:
            self.ri.exporter.add_points(points)
        if self.ri.alerts is not None and self.hooks is not None:
            for text in self.ri.alerts.on_points(points):
                self.hooks.send(self.ri.alerts.urls, text)

    def event(self, message: str, *, level: str = "info", expert: str | None = None) -> None:
        if self.ri.exporter is not None:
            self.ri.exporter.add_event(f"[{level}] " + (f"{expert}: " if expert else "") + message)

    def knobs(self, version: int, changes: dict) -> None:
        """DIR/knobs.json changed: a new knob version (its changes from the spec's knobs)."""
        if self.ri.exporter is not None:
            self.ri.exporter.add_knobs(version, changes)

    def close(self, status: str) -> None:
        """The run ended (completed / failed) or stopped early (running): alert, then drain the trackers."""
        if self.ri.alerts is not None and self.hooks is not None:
            text = self.ri.alerts.on_status(status) if status != "running" else None
            if text:
                self.hooks.send(self.ri.alerts.urls, text)
            self.hooks.close()
        if self.ri.exporter is not None:
            self.ri.exporter.close(status)

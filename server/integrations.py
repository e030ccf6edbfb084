"""The API's trackers and alerts: every metric point as it is ingested, and each pass (every
COPD_EXPORT_INTERVAL_S) the new events, knob versions and status changes of the runs that export or alert.

Why here and not in the workers: the API sees every point of a run exactly once, whichever worker or host
sent it, and a tracker run must be one per copd run (a worker sees only its unit). The exporter keeps its
outbox and cursors under `<data_dir>/exports/run-<id>/`, so an API restart resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from contract.settings import Settings
from contract.spec import RunSpec, SpecError
from contract.vocab import ACTIVE, CRASHED, TERMINAL
from integrations.alerts import Webhooks
from integrations.runs import RunIntegrations, open_run_integrations
from integrations.trackers import Point
from server import crud
from server.models import Event, KnobVersion, Run, utcnow

log = logging.getLogger("copd.server")


@dataclass
class _RunState:
    """What the hub remembers of one run (also in server.json beside its outbox)."""

    ri: RunIntegrations
    folder: Path
    event_id: int = 0
    knob_version: int = 0
    status: str | None = None
    alerted: list[str] = field(default_factory=list)   # "status@changed_at" already alerted
    closed: bool = False

    def save(self) -> None:
        tmp = self.folder / ".server.json.tmp"
        tmp.write_text(json.dumps({"event_id": self.event_id, "knob_version": self.knob_version,
                                   "status": self.status, "alerted": self.alerted[-20:], "closed": self.closed}))
        os.replace(tmp, self.folder / "server.json")


class Integrations:
    """One per API process (app.state.integrations)."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]):
        self.settings, self.sessions = settings, sessions
        self.root = settings.data_dir / "exports"
        self.started = utcnow()
        self.runs: dict[int, _RunState | None] = {}   # None: the run neither exports nor alerts
        self._lock = threading.RLock()
        self._hooks: Webhooks | None = None

    # ---- which runs ---------------------------------------------------------------------------------
    def _state(self, run: Run) -> _RunState | None:
        with self._lock:
            if run.id in self.runs:
                return self.runs[run.id]
            try:
                spec = RunSpec.model_validate(run.spec)
                folder = self.root / f"run-{run.id}"
                saved = _read_json(folder / "server.json")
                if saved.get("closed"):
                    self.runs[run.id] = None
                    return None
                ri = open_run_integrations(spec, self.settings, key=f"run-{run.id}", link=self.link(run.id),
                                           root=self.settings.data_dir, state=folder,
                                           report=lambda level, message, rid=run.id: self._report(rid, level, message))
            except (SpecError, ValueError) as err:
                log.warning("run %d: integrations off (%s)", run.id, err)
                ri = None
            if ri is None or (ri.exporter is None and ri.alerts is None):
                self.runs[run.id] = None
                return None
            st = _RunState(ri, folder, **{k: saved[k] for k in ("event_id", "knob_version", "status", "alerted")
                                          if k in saved})
            self.runs[run.id] = st
            return st

    def link(self, run_id: int) -> str:
        """The dashboard's page of a run."""
        return f"{self.settings.dashboard_url.rstrip('/')}/run?run={run_id}"

    @property
    def hooks(self) -> Webhooks:
        if self._hooks is None:
            self._hooks = Webhooks(report=lambda level, message: log.warning("%s", message))
        return self._hooks

    def _report(self, run_id: int, level: str, message: str) -> None:
        """An exporter's or a webhook's news becomes an event of the run."""
        try:
            with self.sessions() as session:
                crud.add_event(session, run_id=run_id, level=level, message=message, expert=None)
        except Exception:  # noqa: BLE001 - the run may be gone; the log still says it
            log.warning("run %d: %s", run_id, message)

    # ---- what arrives ---------------------------------------------------------------------------------
    def on_metrics(self, session: Session, run_id: int, points: Iterable) -> None:
        """Points just stored (MetricPointIn): to the trackers and the metric rules."""
        run = session.get(Run, run_id)
        st = self._state(run) if run is not None else None
        if st is None:
            return
        pts = [Point(p.expert, p.key, p.step, p.value, p.wall_time or utcnow().timestamp(), p.cycle) for p in points]
        if st.ri.exporter is not None:
            st.ri.exporter.add_points(pts)
        if st.ri.alerts is not None:
            for text in st.ri.alerts.on_points(pts):
                self._send(run_id, st, text)

    def _send(self, run_id: int, st: _RunState, text: str) -> None:
        assert st.ri.alerts is not None
        self.hooks.send(st.ri.alerts.urls, text, lambda level, message: self._report(run_id, level, message))

    def poll(self) -> None:
        """One pass: new events and knob versions to the trackers; status changes to alerts and tracker ends."""
        with self.sessions() as session:
            runs = list(session.scalars(select(Run).where(or_(Run.status.in_(ACTIVE | {CRASHED}),
                                                             Run.status_changed_at >= self.started))))
            for run in runs:
                st = self._state(run)
                if st is None or st.closed:
                    continue
                self._pass(session, run, st)

    def _pass(self, session: Session, run: Run, st: _RunState) -> None:
        events = list(session.scalars(select(Event).where(Event.run_id == run.id, Event.id > st.event_id)
                                      .order_by(Event.id).limit(5000)))
        exporter = st.ri.exporter
        for ev in events:
            if exporter is not None:
                exporter.add_event(f"[{ev.level}] " + (f"{ev.expert}: " if ev.expert else "") + ev.message,
                                   ev.time.timestamp())
            st.event_id = ev.id
        knobs = list(session.scalars(select(KnobVersion).where(KnobVersion.run_id == run.id,
                                                               KnobVersion.version > st.knob_version)
                                     .order_by(KnobVersion.version)))
        for kv in knobs:
            if exporter is not None and kv.version > 0:
                exporter.add_knobs(kv.version, dict(kv.changes or {}), kv.created_at.timestamp())
            st.knob_version = kv.version
        if run.status != st.status:
            stamp = f"{run.status}@{run.status_changed_at.isoformat()}"
            if st.ri.alerts is not None and stamp not in st.alerted:
                why = next((e.message for e in reversed(events) if f"→ {run.status}" in e.message), "")
                text = st.ri.alerts.on_status(run.status, why)
                if text:
                    self._send(run.id, st, text)
                st.alerted.append(stamp)
            st.status = run.status
        if run.status in TERMINAL:
            st.closed = True
            if exporter is not None:
                threading.Thread(target=exporter.close, args=(run.status,), daemon=True).start()
        st.save()

    def close(self) -> None:
        """API shutdown: deliver what can be delivered; tracker runs are resumed by the next start."""
        with self._lock:
            for st in self.runs.values():
                if st is not None and not st.closed and st.ri.exporter is not None:
                    st.ri.exporter.close("running", wait_s=5.0)
            if self._hooks is not None:
                self._hooks.close(timeout_s=10.0)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}

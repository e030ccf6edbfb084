"""The API's watch over running runs, every COPD_REAPER_INTERVAL_S:

- the reaper: a run whose unit in flight sent no heartbeat for COPD_HEARTBEAT_TIMEOUT_S is `crashed`
  (resumable from its last checkpoint);
- the watchdog: a run with no unit in flight while nothing waits in the broker's queues, for
  COPD_STALL_TIMEOUT_S, lost a message — a unit's, or its chord's join (a Redis restart loses both). Its
  next phase is re-sent once (`copd.advance`, which is idempotent: done units are skipped); if it stays
  idle as long again, it is `crashed` with an event that says how to resume it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from server import crud, rules
from server.errors import Conflict
from server.models import utcnow

RESENDS = 1  # times the watchdog re-sends a stalled run's next phase before it crashes the run

log = logging.getLogger("copd.server")


def reap_stale_runs(session: Session, now: datetime, timeout_s: float) -> list[int]:
    """Crash every running run whose units in flight sent no heartbeat for `timeout_s`; returns their ids.

    The event names the silent unit(s): those in flight. A run with no unit in flight is waiting for work.
    """
    crashed = []
    for run_id, units in crud.silent_runs(session, cutoff=now - timedelta(seconds=timeout_s)):
        unit, worker, last_seen = units[0]
        others = f" (also silent: {', '.join(u for u, _, _ in units[1:])})" if len(units) > 1 else ""
        why = (f"no heartbeat from unit {unit} (worker {worker}) for {(now - last_seen).total_seconds():.0f} s"
               f"{others}; timeout {timeout_s:g} s")
        try:
            crud.transition(session, run_id=run_id, rule=rules.CRASH, verb="crashed", by="reaper",
                            message=why, level="error")
        except Conflict:  # it moved on (completed, paused, ...) since we looked
            continue
        log.warning("run %d crashed: %s", run_id, why)
        crashed.append(run_id)
    return crashed


@dataclass
class Watchdog:
    """What the watchdog remembers between passes (in memory: an API restart starts its clocks again)."""

    stall_s: float
    idle_since: dict[int, datetime] = field(default_factory=dict)
    resent: dict[int, int] = field(default_factory=dict)

    def check(self, session: Session, now: datetime, dispatcher: Any) -> list[tuple[int, str]]:
        """Re-send or crash the runs idle for `stall_s` with nothing queued; returns [(run id, what was done)]."""
        idle = set(crud.idle_runs(session))
        for run_id in list(self.idle_since):
            if run_id not in idle:  # a unit runs again (or the run stopped): it was only between units
                self.idle_since.pop(run_id, None)
                self.resent.pop(run_id, None)
        done: list[tuple[int, str]] = []
        pending: int | None | bool = False  # asked once per pass, only when some run is due
        for run_id in sorted(idle):
            since = self.idle_since.setdefault(run_id, now)
            quiet = (now - since).total_seconds()
            if quiet < self.stall_s:
                continue
            if pending is False:
                pending = dispatcher.pending()
            if pending is None or pending > 0:  # work is queued (maybe this run's), or the broker is down
                continue
            if self.resent.get(run_id, 0) < RESENDS:
                try:
                    dispatcher.send(rules.ADVANCE_TASK, run_id=run_id)
                except Exception as err:  # noqa: BLE001 - the broker is down: try again next pass
                    log.warning("watchdog: run %d: could not re-send its next phase (%s)", run_id, err)
                    continue
                self.resent[run_id] = self.resent.get(run_id, 0) + 1
                self.idle_since[run_id] = now
                crud.add_event(session, run_id=run_id, level="warning", expert=None, message=(
                    f"watchdog: no unit in flight for {quiet:.0f} s and nothing queued: the run's next unit or "
                    "its join was lost (a broker restart?); re-sent the next phase"))
                log.warning("run %d: stalled for %.0f s; next phase re-sent", run_id, quiet)
                done.append((run_id, "resent"))
                continue
            why = (f"no unit in flight for {quiet:.0f} s and nothing queued, even after re-sending the next "
                   f"phase; once the workers and the broker are up, resume it (`copd runs resume {run_id}`): "
                   "it continues from the units done")
            try:
                crud.transition(session, run_id=run_id, rule=rules.CRASH, verb="crashed", by="watchdog",
                                message=why, level="error")
            except Conflict:
                continue
            self.idle_since.pop(run_id, None)
            self.resent.pop(run_id, None)
            log.warning("run %d crashed: %s", run_id, why)
            done.append((run_id, "crashed"))
        return done


def _reap_once(sessions: sessionmaker[Session], timeout_s: float, watchdog: Watchdog | None = None,
               dispatcher: Any = None) -> list[int]:
    with sessions() as session:
        crashed = reap_stale_runs(session, utcnow(), timeout_s)
        if watchdog is not None and watchdog.stall_s > 0 and dispatcher is not None:
            watchdog.check(session, utcnow(), dispatcher)
        return crashed


async def reaper_loop(sessions: sessionmaker[Session], interval_s: float, timeout_s: float,
                      dispatcher: Any = None, stall_s: float = 0.0) -> None:
    """Every `interval_s`, reap (and watch for stalled runs) in a worker thread (the database calls block);
    errors are logged, not fatal."""
    watchdog = Watchdog(stall_s)
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(_reap_once, sessions, timeout_s, watchdog, dispatcher)
        except Exception:
            log.exception("reaper pass failed; trying again in %g s", interval_s)

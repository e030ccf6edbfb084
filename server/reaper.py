"""Marks running runs whose heartbeats stopped as `crashed` (resumable from their last checkpoint)."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from server import crud, rules
from server.errors import Conflict
from server.models import utcnow

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


def _reap_once(sessions: sessionmaker[Session], timeout_s: float) -> list[int]:
    with sessions() as session:
        return reap_stale_runs(session, utcnow(), timeout_s)


async def reaper_loop(sessions: sessionmaker[Session], interval_s: float, timeout_s: float) -> None:
    """Every `interval_s`, reap in a worker thread (the database calls block); errors are logged, not fatal."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(_reap_once, sessions, timeout_s)
        except Exception:
            log.exception("reaper pass failed; trying again in %g s", interval_s)

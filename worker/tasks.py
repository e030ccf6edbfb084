"""The two tasks. Like web views: they take ids, call worker.join / worker.unit, and are safe to run twice.

  copd.advance(run_id, after=None)   light queue: the join; dispatches the next phase as a chord
  copd.run_unit(run_id, unit_id)     gpu queue: one (run, expert, cycle, phase) unit
"""

from __future__ import annotations

import logging
import threading
import time

from celery import chord
from celery.exceptions import Reject

from contract.client import RETRY_STATUS, ApiError, Client
from worker.celery_app import SHUTTING_DOWN, app
from worker.config import WorkerSettings
from worker.join import advance_run
from worker.runfolder import Phase
from worker.unit import Requeue, execute_unit, report_failure

log = logging.getLogger("copd.worker")
_local = threading.local()
API_DOWN_WAIT_S = 30.0
# The API could not be reached (0) or could not answer (502-504: a proxy, or its database restarting) for
# longer than COPD_API_RETRY_S: transient, so the work is tried again later rather than the run failed.
TRANSIENT_STATUS = frozenset({0}) | RETRY_STATUS


def _api() -> Client:
    """This process's API client (waits up to COPD_API_RETRY_S for an API that restarts)."""
    if getattr(_local, "api", None) is None:
        _local.cfg = WorkerSettings()
        _local.api = Client.from_settings(retry_s=_local.cfg.api_retry_s)
    return _local.api


def unit_task_id(run_id: int, unit_id: str) -> str:
    """One task id per unit: a re-dispatched unit's result also completes an older chord waiting for it."""
    return f"copd-{run_id}-{unit_id.replace('/', '-')}"


def dispatch_phase(run_id: int, phase: Phase) -> None:
    """A chord: the phase's units on the gpu queue, then `copd.advance(after=phase)` on the light queue."""
    header = []
    for unit in phase.units:
        task_id = unit_task_id(run_id, unit.id)
        app.AsyncResult(task_id).forget()  # a stale result (a unit skipped while paused) must not join early
        header.append(run_unit.si(run_id, unit.id).set(task_id=task_id))
    chord(header, advance.si(run_id, after=phase.id)).apply_async()


@app.task(name="copd.advance", bind=True, ignore_result=True, max_retries=None)
def advance(self, run_id: int, after: str | None = None) -> None:
    """Join of a phase (or start/resume): dispatch the next phase, complete the run, or do nothing."""
    try:
        did = advance_run(_api(), run_id, after, by=self.request.id or "advance", dispatch=dispatch_phase)
        log.info("advance after %s: %s", after or "start/resume", did)
    except ApiError as err:
        if err.status in TRANSIENT_STATUS:  # the API (or its database) is down: try again later
            raise self.retry(countdown=API_DOWN_WAIT_S) from err
        raise
    except Exception as err:  # e.g. a strategy trainer/ does not implement: the run fails, visibly
        log.exception("run %d: advance after %s failed", run_id, after)
        report_failure(_api(), run_id, None, err)
        raise


@app.task(name="copd.run_unit", bind=True)
def run_unit(self, run_id: int, unit_id: str) -> dict:
    """Run one unit; a failure fails the run (the chord then never joins); a shutdown requeues the unit."""
    try:
        api = _api()
        return execute_unit(api, run_id, unit_id, worker=self.request.hostname or "worker", cfg=_local.cfg,
                            shutting_down=SHUTTING_DOWN.is_set)
    except Requeue:
        log.warning("run %d unit %s: worker shutting down, unit requeued", run_id, unit_id)
        raise Reject(f"{unit_id}: worker shutting down", requeue=True) from None
    except ApiError as err:
        if err.status in TRANSIENT_STATUS:  # the API is down: the unit runs again later, from its input checkpoint
            # Not self.retry(countdown=…): a solo worker runs countdown tasks in its timer thread, beside the
            # unit in progress. Wait here (nothing can report meanwhile), then put the message back.
            log.warning("run %d unit %s: %s; requeued in %.0f s", run_id, unit_id, err.detail, API_DOWN_WAIT_S)
            time.sleep(API_DOWN_WAIT_S)
            raise Reject(f"{unit_id}: API unreachable", requeue=True) from None
        report_failure(_api(), run_id, unit_id, err)
        raise
    except Exception as err:
        log.exception("run %d unit %s failed", run_id, unit_id)
        report_failure(_api(), run_id, unit_id, err)
        raise

"""Worker-facing endpoints: status reports, progress, heartbeats (write role)."""

from __future__ import annotations

from contract.vocab import FAILED
from server import crud, rules
from server.deps import RunId, SessionDep, Writer
from server.guard import conflict, router
from server.schemas import HeartbeatCreate, HeartbeatPublic, ProgressReport, RunPublic, StatusReport, run_public

api = router(tags=["worker"])


@api.post("/runs/{run_id}/status", response_model=RunPublic,
          responses=conflict("The run is not in a state this report is allowed from; `detail` names it."))
def report_status(run_id: RunId, body: StatusReport, session: SessionDep, who: Writer) -> RunPublic:
    """queued → running, running | paused → completed, queued | running | paused → failed (→ crashed when
    `resumable`: `resume` continues it); else 409."""
    level = "error" if body.status == FAILED else "info"
    rule, verb = rules.WORKER_REPORTS[body.status], body.status
    if body.status == FAILED and body.resumable:
        rule, verb = rules.RESUMABLE_FAILURE, "failed (resumable)"
    run, _ = crud.transition(session, run_id=run_id, rule=rule, verb=verb, by=who.name, message=body.message,
                             level=level)
    return run_public(run)


@api.post("/runs/{run_id}/progress", response_model=RunPublic,
          responses=conflict("The run is not queued, running or paused."))
def report_progress(run_id: RunId, body: ProgressReport, session: SessionDep, _: Writer) -> RunPublic:
    """Cycle, phase and progress of the run; with `expert`, that expert's unit and status."""
    return run_public(crud.report_progress(session, run_id=run_id, report=body))


@api.post("/runs/{run_id}/heartbeats", response_model=HeartbeatPublic,
          responses=conflict("The run was cancelled or is over: stop the unit."))
def heartbeat(run_id: RunId, body: HeartbeatCreate, session: SessionDep, _: Writer) -> HeartbeatPublic:
    """A unit is alive. The reply carries the run's status; 409 once the run is cancelled or over."""
    hb, status = crud.record_heartbeat(session, run_id=run_id, unit=body.unit, worker=body.worker, done=body.done)
    return HeartbeatPublic(unit=hb.unit, worker=hb.worker, last_seen=hb.last_seen, run_status=status)

"""Lifecycle actions: start, pause, resume, cancel (202 with the run; 409 names the current state)."""

from __future__ import annotations

from server import crud, rules
from server.deps import DispatcherDep, RunId, SessionDep, Writer
from server.errors import Unavailable
from server.guard import conflict, router

NOT_NOW = conflict("The run is not in a state this action is allowed from; `detail` names its state.")
from server.schemas import RunPublic, run_public

api = router(tags=["lifecycle"])


def _act(action: str, run_id: int, session: SessionDep, dispatcher: DispatcherDep, who: Writer) -> RunPublic:
    rule = rules.ACTIONS[action]
    run, previous = crud.transition(session, run_id=run_id, rule=rule, verb=action, by=who.name)
    if rule.dispatch:
        try:
            dispatcher.send(rules.ADVANCE_TASK, run_id=run_id)
        except Exception as err:  # broker down: put the run back where it was, so the user can retry
            back = rules.Transition(frozenset({rule.to}), previous, False)
            crud.transition(session, run_id=run_id, rule=back, verb=f"{action} undone", by="server",
                            message=f"dispatch failed: {err}", level="error")
            raise Unavailable(f"dispatch: could not hand the run to the workers ({err}); retry") from None
    return run_public(run)


@api.post("/runs/{run_id}/start", status_code=202, response_model=RunPublic, responses=NOT_NOW)
def start(run_id: RunId, session: SessionDep, dispatcher: DispatcherDep, who: Writer) -> RunPublic:
    """draft → queued, and `copd.advance` is sent to the workers."""
    return _act("start", run_id, session, dispatcher, who)


@api.post("/runs/{run_id}/pause", status_code=202, response_model=RunPublic, responses=NOT_NOW)
def pause(run_id: RunId, session: SessionDep, dispatcher: DispatcherDep, who: Writer) -> RunPublic:
    """queued | running → paused: the unit in progress finishes, no next unit is enqueued."""
    return _act("pause", run_id, session, dispatcher, who)


@api.post("/runs/{run_id}/resume", status_code=202, response_model=RunPublic, responses=NOT_NOW)
def resume(run_id: RunId, session: SessionDep, dispatcher: DispatcherDep, who: Writer) -> RunPublic:
    """paused | crashed → queued (from the last checkpoint), and `copd.advance` is sent."""
    return _act("resume", run_id, session, dispatcher, who)


@api.post("/runs/{run_id}/cancel", status_code=202, response_model=RunPublic, responses=NOT_NOW)
def cancel(run_id: RunId, session: SessionDep, dispatcher: DispatcherDep, who: Writer) -> RunPublic:
    """draft | queued | running | paused | crashed → cancelled; workers stop at the next step boundary."""
    return _act("cancel", run_id, session, dispatcher, who)

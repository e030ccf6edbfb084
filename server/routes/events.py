"""Events: a run's log (lifecycle changes, worker logs, errors)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from server import crud
from server.deps import Reader, RunId, SessionDep, Writer
from server.guard import router
from server.schemas import EventCreate, EventLevel, EventList, EventPublic

api = router(tags=["events"])


@api.post("/runs/{run_id}/events", status_code=201, response_model=EventPublic)
def post_event(run_id: RunId, body: EventCreate, session: SessionDep, _: Writer) -> EventPublic:
    ev = crud.add_event(session, run_id=run_id, level=body.level, message=body.message, expert=body.expert)
    return EventPublic.model_validate(ev)


@api.get("/runs/{run_id}/events", response_model=EventList)
def list_events(run_id: RunId, session: SessionDep, _: Reader,
                after_id: Annotated[int, Query(ge=0, le=2**62, description="Only events after this id.")] = 0,
                level: EventLevel | None = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> EventList:
    """Oldest first; poll with after_id = the last id seen. `total` counts every match past `limit` too."""
    items, total = crud.list_events(session, run_id=run_id, after_id=after_id, level=level, limit=limit)
    return EventList(items=[EventPublic.model_validate(e) for e in items], total=total)

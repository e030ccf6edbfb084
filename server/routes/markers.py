"""Unit markers and leases: what every worker host must see of a run when they share no disk (write role)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Response

from server import crud
from server.deps import Reader, RunId, SessionDep, Writer
from server.guard import conflict, router
from server.schemas import LeasePublic, LeaseRequest, MarkerCreate, MarkerKind, MarkerList, MarkerPublic

api = router(tags=["worker"])


@api.get("/runs/{run_id}/markers", response_model=MarkerList)
def list_markers(run_id: RunId, session: SessionDep, _: Reader,
                 kind: Annotated[MarkerKind | None, Query()] = None) -> MarkerList:
    """Units done, phases dispatched and the fork seeded, oldest first."""
    items = crud.list_markers(session, run_id=run_id, kind=kind)
    return MarkerList(items=[MarkerPublic.model_validate(m) for m in items])


@api.post("/runs/{run_id}/markers", status_code=201, response_model=MarkerPublic,
          responses=conflict("`exclusive` and the marker exists: another join dispatched this phase."))
def put_marker(run_id: RunId, body: MarkerCreate, session: SessionDep, _: Writer, response: Response) -> MarkerPublic:
    """201 when new; 200 when an existing marker was replaced."""
    marker, created = crud.put_marker(session, run_id=run_id, kind=body.kind, name=body.name, body=body.body,
                                      exclusive=body.exclusive)
    response.status_code = 201 if created else 200
    return MarkerPublic.model_validate(marker)


@api.post("/runs/{run_id}/leases", response_model=LeasePublic)
def take_lease(run_id: RunId, body: LeaseRequest, session: SessionDep, _: Writer) -> LeasePublic:
    """Take or renew a unit's lease; `granted` false while another worker's heartbeat of it is fresh."""
    hb, granted = crud.take_lease(session, run_id=run_id, unit=body.unit, worker=body.worker, ttl_s=body.ttl_s)
    return LeasePublic(granted=granted, holder=hb.worker, last_seen=hb.last_seen)

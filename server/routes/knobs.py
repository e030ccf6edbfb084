"""Knobs (OPD mixing): read, change with optimistic versioning, and record where a worker applied them."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

from server import crud
from server.deps import Reader, RunId, SessionDep, Writer
from server.guard import conflict, router
from server.schemas import MAX_ID, KnobsApplied, KnobsPublic, KnobsUpdate, knobs_public

api = router(tags=["knobs"])


@api.get("/runs/{run_id}/knobs", response_model=KnobsPublic)
def get_knobs(run_id: RunId, session: SessionDep, _: Reader) -> KnobsPublic:
    """Current version and values, and every version's changes (version 0 = the spec's knobs)."""
    return knobs_public(crud.knob_history(session, run_id=run_id))


@api.patch("/runs/{run_id}/knobs", response_model=KnobsPublic,
           responses=conflict("`expected_version` is stale, or the run is over."))
def change_knobs(run_id: RunId, body: KnobsUpdate, session: SessionDep, who: Writer) -> KnobsPublic:
    """Save a new version; 409 when `expected_version` is not the current one, 422 names a bad value."""
    history = crud.change_knobs(session, run_id=run_id, expected_version=body.expected_version,
                                changes=body.changes, author=who.name)
    return knobs_public(history)


@api.post("/runs/{run_id}/knobs/{version}/applied", response_model=KnobsPublic)
def knobs_applied(run_id: RunId, version: Annotated[int, Path(ge=0, le=MAX_ID)], body: KnobsApplied,
                  session: SessionDep, _: Writer) -> KnobsPublic:
    """Worker: this version took effect at (cycle, step). The first report is kept; repeats are no-ops."""
    history = crud.mark_knobs_applied(session, run_id=run_id, version=version, cycle=body.cycle, step=body.step)
    return knobs_public(history)

"""Runs: create from a spec, list, get, delete, fork."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Response

from server import crud
from server.deps import Reader, RunId, SessionDep, Writer
from server.guard import conflict, router
from server.schemas import ForkCreate, RunList, RunPublic, RunStatus, run_public
from contract.spec import RunSpec

api = router(tags=["runs"])


@api.post("/runs", status_code=201, response_model=RunPublic)
def create_run(spec: RunSpec, session: SessionDep, who: Writer) -> RunPublic:
    """Create a draft run; the body is the run spec itself (422 names the bad field)."""
    return run_public(crud.create_run(session, spec=spec, author=who.name))


@api.get("/runs", response_model=RunList)
def list_runs(session: SessionDep, _: Reader,
              status: Annotated[list[RunStatus] | None, Query(description="Repeat to match several.")] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50,
              offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> RunList:
    """Runs, newest first."""
    runs, total = crud.list_runs(session, statuses=status, limit=limit, offset=offset)
    return RunList(items=[run_public(r) for r in runs], total=total)


@api.get("/runs/{run_id}", response_model=RunPublic)
def get_run(run_id: RunId, session: SessionDep, _: Reader) -> RunPublic:
    return run_public(crud.get_run(session, run_id=run_id))


@api.delete("/runs/{run_id}", status_code=204,
            responses=conflict("The run is queued, running or paused, or forks start from it."))
def delete_run(run_id: RunId, session: SessionDep, _: Writer) -> Response:
    """Delete a run with its metrics, checkpoints records and events; refused while queued, running or paused."""
    crud.delete_run(session, run_id=run_id)
    return Response(status_code=204)


@api.post("/runs/{run_id}/fork", status_code=201, response_model=RunPublic)
def fork_run(run_id: RunId, body: ForkCreate, session: SessionDep, who: Writer) -> RunPublic:
    """A new draft run starting from a checkpoint of this one; lineage kept in parent_run_id / parent_checkpoint_id."""
    run = crud.fork_run(session, run_id=run_id, checkpoint_id=body.checkpoint_id, name=body.name,
                        overrides=body.overrides, author=who.name)
    return run_public(run)

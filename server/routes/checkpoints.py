"""Checkpoints: register (idempotent per expert, cycle, step), list, get, mark final."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Response

from server import crud
from server.deps import CheckpointId, Reader, RunId, SessionDep, Writer
from server.guard import conflict, router
from server.schemas import CheckpointCreate, CheckpointDeleted, CheckpointList, CheckpointPublic

api = router(tags=["checkpoints"])


@api.post("/runs/{run_id}/checkpoints", status_code=201, response_model=CheckpointPublic,
          responses=conflict("The same checkpoint was registered concurrently; retry."))
def register(run_id: RunId, body: CheckpointCreate, session: SessionDep, _: Writer,
             response: Response) -> CheckpointPublic:
    """201 when new; 200 when the same (expert, cycle, step) was registered before (it is updated)."""
    ckpt, created = crud.register_checkpoint(session, run_id=run_id, body=body)
    response.status_code = 201 if created else 200
    return CheckpointPublic.model_validate(ckpt)


@api.get("/runs/{run_id}/checkpoints", response_model=CheckpointList)
def list_checkpoints(run_id: RunId, session: SessionDep, _: Reader,
                     expert: Annotated[str | None, Query(max_length=64)] = None,
                     final: bool | None = None,
                     deleted: Annotated[bool | None, Query(description="true: only checkpoints whose files "
                                                           "were deleted; false: only those kept")] = None,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                     offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> CheckpointList:
    items, total = crud.list_checkpoints(session, run_id=run_id, expert=expert, final=final, deleted=deleted,
                                         limit=limit, offset=offset)
    return CheckpointList(items=[CheckpointPublic.model_validate(c) for c in items], total=total)


@api.get("/runs/{run_id}/checkpoints/{checkpoint_id}", response_model=CheckpointPublic)
def get_checkpoint(run_id: RunId, checkpoint_id: CheckpointId, session: SessionDep, _: Reader) -> CheckpointPublic:
    return CheckpointPublic.model_validate(crud.get_checkpoint(session, run_id=run_id, checkpoint_id=checkpoint_id))


@api.post("/runs/{run_id}/checkpoints/{checkpoint_id}/final", response_model=CheckpointPublic)
def mark_final(run_id: RunId, checkpoint_id: CheckpointId, session: SessionDep, _: Writer) -> CheckpointPublic:
    """This checkpoint is its expert's final one (another final of the same expert is unmarked)."""
    return CheckpointPublic.model_validate(crud.mark_final(session, run_id=run_id, checkpoint_id=checkpoint_id))


@api.post("/runs/{run_id}/checkpoints/{checkpoint_id}/deleted", response_model=CheckpointPublic,
          responses=conflict("The checkpoint is final: final models are always kept."))
def mark_deleted(run_id: RunId, checkpoint_id: CheckpointId, body: CheckpointDeleted, session: SessionDep,
                 _: Writer) -> CheckpointPublic:
    """Its files were deleted by retention or `copd checkpoints gc` (the record stays, with `deleted_at`)."""
    return CheckpointPublic.model_validate(crud.mark_deleted(session, run_id=run_id, checkpoint_id=checkpoint_id,
                                                             reason=body.reason))

"""The server's side of the REST bodies: the bodies themselves live in contract/schemas.py (every client
parses them); here the tables become public bodies."""

from __future__ import annotations

from typing import Any

from contract.schemas import *  # noqa: F401,F403  (the old import path of every body)
from contract.schemas import KnobApplication, KnobHistoryEntry, KnobsPublic, RunPublic


def run_public(run: Any) -> RunPublic:
    """The API view of a runs row: its stored spec, with the experts' live state, plus run state."""
    experts = [{"name": e.name, "domain": e.domain, "status": e.status, "unit": e.unit} for e in run.experts]
    return RunPublic.model_validate({
        **run.spec, "experts": experts, "id": run.id, "status": run.status, "cycle": run.cycle,
        "phase": run.phase, "progress": run.progress, "created_at": run.created_at, "started_at": run.started_at,
        "finished_at": run.finished_at, "parent_run_id": run.parent_run_id,
        "parent_checkpoint_id": run.parent_checkpoint_id})


def knobs_public(history: list[Any]) -> KnobsPublic:
    """GET/PATCH knobs body from the versions, oldest first."""
    entries = [KnobHistoryEntry(
        version=k.version, changes=k.changes, author=k.author, created_at=k.created_at,
        applied=None if k.applied_at is None else KnobApplication(cycle=k.applied_cycle, step=k.applied_step,
                                                                  at=k.applied_at))
        for k in history]
    return KnobsPublic(version=history[-1].version, values=history[-1].values, history=entries)

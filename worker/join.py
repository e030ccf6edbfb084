"""The join of a phase (`copd.advance`): record progress, decide the next phase from the done markers, send it.

Idempotent: it reads only the run's status (API) and the marker files, so running it twice, late, or after
a crash dispatches nothing twice. Called by the server on start and resume (`after=None`: dispatch the first
unfinished phase, whatever was sent before) and as the body of each phase's chord (`after=<phase>`).
"""

from __future__ import annotations

import logging
from typing import Callable

from contract.client import ApiError, Client
from contract.plan import plan
from contract.spec import RunSpec
from worker.fork import ForkError, seed_fork
from worker.runfolder import Phase, RunFolder, unit_weight, write_atomic
from contract.vocab import COMPLETED, FAILED, MERGED, QUEUED, RUNNABLE, RUNNING
from worker.runs import checkpoint_store, run_folder, run_root, spec_of

log = logging.getLogger("copd.worker")


def advance_run(api: Client, run_id: int, after: str | None, *, by: str,
                dispatch: Callable[[int, Phase], None]) -> str:
    """Move the run one phase on; returns what it did, in words."""
    run = api.get_run(run_id)
    if run.status not in RUNNABLE:  # paused, cancelled, crashed, over: enqueue nothing
        return f"run {run_id} is {run.status}: nothing dispatched"
    spec = spec_of(run)
    folder = run_folder(api, run_id)
    if after is not None and not folder.phase_done(spec, after):
        return f"run {run_id}: {after} has units that stopped early: nothing dispatched"
    if run.status == QUEUED:
        try:
            api.report_status(run_id, RUNNING)
        except ApiError as err:  # paused or cancelled meanwhile, or another join marked it running
            if err.status != 409:
                raise
            return f"run {run_id}: {err.detail}: nothing dispatched"
        write_atomic(folder.root / "spec.json", spec.model_dump_json(indent=1))
        try:
            seed_fork(api, run, spec, folder)
        except ForkError as err:
            _report(api.report_status, run_id, FAILED, message=f"fork: {err}")
            return f"run {run_id}: fork failed: {err}"
    phase = folder.next_phase(spec)
    if phase is None:
        finish_run(api, run_id, spec)
        keep_within_retention(api, run_id, spec, folder)
        return f"run {run_id}: completed"
    if not folder.claim(phase.id, by, force=after is None):
        return f"run {run_id}: {phase.id} was dispatched by another join"
    if after is not None:
        keep_within_retention(api, run_id, spec, folder)
    units = plan(spec)
    total = sum(unit_weight(spec, u) for u in units) or 1
    finished = folder.done(spec)
    done = sum(unit_weight(spec, u) for u in units if u.id in finished) / total
    _report(api.report_progress, run_id, cycle=min(phase.cycle, spec.schedule.cycles), phase=phase.kind,
            progress=min(done, 0.99))
    dispatch(run_id, phase)
    return f"run {run_id}: dispatched {phase.id} ({', '.join(u.id for u in phase.units)})"


def finish_run(api: Client, run_id: int, spec: RunSpec) -> None:
    """Every unit is done: mark the all-in-one model final (else each expert's last checkpoint), complete the run."""
    items = api.list_checkpoints(run_id, limit=1000).items
    merged = [c for c in items if c.expert == MERGED]
    finals = [merged] if merged else [[c for c in items if c.expert == e] for e in spec.expert_names]
    for group in finals:
        if group:
            api.mark_final(run_id, max(group, key=lambda c: (c.cycle, c.step, c.id)).id)
    _report(api.report_status, run_id, COMPLETED)


def keep_within_retention(api: Client, run_id: int, spec: RunSpec, folder: RunFolder) -> None:
    """Apply the spec's `checkpoints:` policy after a phase; a failure is a warning event, never the run's."""
    from worker.checkpoints import apply_plan, retention_plan
    from worker.store import StoreError

    try:
        plan_ = retention_plan(api, run_id, spec, folder)
        if plan_:
            apply_plan(api, run_id, plan_, checkpoint_store())
            log.info("run %d: retention deleted %d checkpoints, dropped %d optimizer states", run_id,
                     len(plan_.delete), len(plan_.drop_optimizer))
    except Exception as err:  # noqa: BLE001 - the store, the API, a bug: reported, and the run goes on
        log.warning("run %d: retention not applied: %s", run_id, err, exc_info=not isinstance(err, (StoreError, ApiError)))
        try:
            api.post_event(run_id, f"retention not applied (tried again after the next phase): {err}", level="warning")
        except ApiError:
            pass


def _report(call, run_id: int, *args, **kwargs) -> None:
    """A report that may race with a user's pause or cancel (409): the user wins, the join moves on."""
    try:
        call(run_id, *args, **kwargs)
    except ApiError as err:
        if err.status != 409:
            raise
        log.info("run %d: %s", run_id, err.detail)

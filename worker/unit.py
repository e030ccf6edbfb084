"""One unit, start to end: skip what is done, hold the unit's lock, run it through trainer/, mark it done."""

from __future__ import annotations

import logging
import traceback
from dataclasses import asdict, is_dataclass
from typing import Any, Callable

from contract.client import ApiError, Client
from contract.plan import Unit, plan
from worker.config import WorkerSettings
from worker.reporting import Heartbeats, RestReporter, api_cycle
from worker.runfolder import LockAbandoned, RunFolder, unit_of, unit_weight
from contract.vocab import FAILED, RUNNABLE
from worker.runs import checkpoint_store, context_for, run_folder, run_root, spec_of
from trainer.diskspace import disk_full_error
from worker.checkpoints import fetch_inputs, publish
from worker.store import NotInStore, StoreError

log = logging.getLogger("copd.worker")

_applied: dict[int, set[int]] = {}  # run → knob versions this process reported as applied


class Requeue(Exception):
    """The worker is shutting down mid-unit: put the unit's message back (it runs again from its input)."""


def execute_unit(api: Client, run_id: int, unit_id: str, *, worker: str, cfg: WorkerSettings,
                 shutting_down: Callable[[], bool]) -> dict[str, Any]:
    """Run `unit_id` of `run_id` unless it is done or the run stopped; returns a small JSON summary."""
    run = api.get_run(run_id)
    folder = run_folder(api, run_id)
    if folder.is_done(unit_id):
        return {"unit": unit_id, "skipped": "done"}
    if run.status not in RUNNABLE:  # paused: the unit boundary is here; cancelled, crashed, over: nothing to do
        return {"unit": unit_id, "skipped": run.status}
    spec = spec_of(run)

    def keep_waiting() -> bool:  # another live worker runs this unit: wait for it, as a chord member must
        if shutting_down():
            raise Requeue(unit_id)
        return not folder.is_done(unit_id) and api.get_run(run_id).status in RUNNABLE

    try:
        with folder.lock(unit_id, wait=keep_waiting, poll_s=2.0, worker=worker):
            if folder.is_done(unit_id):
                return {"unit": unit_id, "skipped": "done"}
            return _run_locked(api, run_id, spec, unit_of(spec, unit_id), folder, worker, cfg, shutting_down)
    except LockAbandoned:
        return {"unit": unit_id, "skipped": "done" if folder.is_done(unit_id) else api.get_run(run_id).status}


def _run_locked(api, run_id, spec, unit: Unit, folder: RunFolder, worker: str, cfg: WorkerSettings,
                shutting_down) -> dict[str, Any]:
    from trainer.units import Cancelled, run_unit

    cycles = spec.schedule.cycles
    units = plan(spec)
    total = sum(unit_weight(spec, u) for u in units) or 1
    done = folder.done(spec)
    before = sum(unit_weight(spec, u) for u in units if u.id in done) / total
    store = checkpoint_store()
    with Heartbeats(api, run_id, unit.id, worker, cfg.heartbeat_interval_s) as hb:
        if store is not None:  # what this unit reads, from the store (a no-op for what this host holds)
            fetch_inputs(store, run_id, spec, unit)
        ctx = context_for(run_id, spec, log_fn=_run_log(api, run_id))  # e.g. building the tiny base model
        reporter = RestReporter(api, run_id, unit, cycles=cycles, applied=_applied.setdefault(run_id, set()),
                                progress_span=(before, unit_weight(spec, unit) / total),
                                stop_check_s=cfg.stop_check_s, step_delay_s=cfg.step_delay_s,
                                shutting_down=shutting_down, heartbeats=hb,
                                publish=lambda info: publish(store, spec, info))
        _expert_status(api, run_id, unit, cycles, "running", before, spec.expert_names)
        try:
            result = run_unit(ctx, unit, reporter)
        except Cancelled:
            if shutting_down():
                raise Requeue(unit.id) from None
            status = api.get_run(run_id).status
            log.info("run %d unit %s: stopped at a step boundary, the run is %s", run_id, unit.id, status)
            api.post_event(run_id, f"{unit.id}: stopped at a step boundary (the run is {status})",
                           level="warning", expert=unit.expert)
            return {"unit": unit.id, "skipped": status}
    summary = {"result": asdict(result) if is_dataclass(result) else result, "checkpoints": reporter.checkpoints,
               "worker": worker}
    folder.mark_done(unit.id, summary)
    _expert_status(api, run_id, unit, cycles, "done", before + unit_weight(spec, unit) / total, spec.expert_names)
    return {"unit": unit.id, "done": True, "checkpoints": reporter.checkpoints}


def _run_log(api: Client, run_id: int) -> Callable[[str], None]:
    """The trainer's log lines as the run's events (so `copd runs watch` shows a model being built)."""
    def log_fn(message: str) -> None:
        log.info("run %d: %s", run_id, message)
        try:
            api.post_event(run_id, message)
        except ApiError as err:
            log.warning("run %d: event not recorded (%s)", run_id, err)
    return log_fn


def _expert_status(api: Client, run_id: int, unit: Unit, cycles: int, status: str, progress: float,
                   experts: list[str] | None = None) -> None:
    """The unit's expert on `unit` with `status` (a lockstep unit: every expert of the run; others: none)."""
    names = [unit.expert] if unit.expert else (experts or []) if unit.kind == "lockstep" else [None]
    try:
        for name in names:
            api.report_progress(run_id, cycle=api_cycle(unit, cycles), phase=unit.kind, expert=name,
                                unit=unit.id if name else None,
                                expert_status=status if name else None, progress=min(progress, 0.99))
    except ApiError as err:
        if err.status != 409:  # 409: the run stopped meanwhile
            raise


def report_failure(api: Client, run_id: int, unit_id: str | None, err: BaseException) -> None:
    """A unit (or the join, `unit_id` None) raised: an error event with the traceback's tail, the expert
    marked failed, the run's progress set back to the units done, the run failed — or, for a transient cause
    (a full disk), `crashed` with an event that says what to do, so that `resume` continues it."""
    unit = Unit.parse(unit_id) if unit_id else None
    tail = "".join(traceback.format_exception(type(err), err, err.__traceback__)[-3:])
    full = disk_full_error(err, run_root(run_id))
    # a store that failed is transient (resume once it answers); a checkpoint missing from it is not
    store_err = next((e for e in (err, err.__cause__) if isinstance(e, StoreError) and not isinstance(e, NotInStore)),
                     None)
    if full is not None:
        message = (f"{unit_id or 'scheduling'} stopped: {full}; free space there, then resume the run "
                   f"(`copd runs resume {run_id}`): the unit runs again from its input checkpoint")
    elif store_err is not None:
        message = (f"{unit_id or 'scheduling'} stopped: {store_err}; once the store answers, resume the run "
                   f"(`copd runs resume {run_id}`): the unit runs again from its input checkpoint")
    else:
        message = f"{unit_id or 'scheduling'} failed: {type(err).__name__}: {err}"
    try:
        if unit is not None:
            run = api.get_run(run_id)
            api.report_progress(run_id, cycle=api_cycle(unit, run.schedule.cycles), phase=unit.kind, expert=unit.expert,
                                unit=unit_id if unit.expert else None,
                                expert_status="failed" if unit.expert else None, progress=_done_share(api, run_id))
    except (ApiError, OSError, ValueError):
        pass
    try:
        api.post_event(run_id, f"{message}\n{tail}"[:10_000], level="error", expert=unit.expert if unit else None)
        api.report_status(run_id, FAILED, message=message[:4000], resumable=full is not None or store_err is not None)
    except ApiError as api_err:
        log.error("run %d: could not report the failure of %s (%s)", run_id, unit_id, api_err)


def _done_share(api: Client, run_id: int) -> float:
    """The share of the run its done units stand for: the true progress once a unit failed."""
    spec = spec_of(api.get_run(run_id))
    done = run_folder(api, run_id).done(spec)
    units = plan(spec)
    total = sum(unit_weight(spec, u) for u in units) or 1
    return min(sum(unit_weight(spec, u) for u in units if u.id in done) / total, 0.99)

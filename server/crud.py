"""Every query of the server, as keyword-only functions over a Session. Mutations commit (one transaction each)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Iterable, Sequence

from pydantic import ValidationError
from sqlalchemy import Select, delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, selectinload

from server import rules
from server.errors import Conflict, Invalid, NotFound, invalid_from, one_line
from server.models import (Checkpoint, Event, Expert, Heartbeat, KnobVersion, Metric, Run, SamplePrompt, Token,
                           UnitMarker, utcnow)
from server.schemas import CheckpointCreate, MetricPointIn, MetricPointOut, ProgressReport, PromptSample, Series
from contract.spec import RunSpec, data_path_errors, knobs_from_spec, validate_knob_changes
from contract.vocab import COMPLETED, DRAFT, RESERVED_EXPERT_NAMES, RUNNING

# Series and checkpoint owners besides the experts: the merged model, the base, and the trainer's other
# reserved policies (e.g. a baseline's single mixed policy or distilled student).
SERIES_EXTRA = RESERVED_EXPERT_NAMES  # merged, base, mixed, student: series and checkpoints of no expert
CHUNK = 5_000  # rows per executemany: bounded memory, well under SQLite's variable limit
DEADLOCK_RETRIES = 2  # a metric batch rolled back by a deadlock is written again this many times


def _insert(session: Session) -> Any:
    """The dialect's INSERT that supports ON CONFLICT."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _event(session: Session, run_id: int, message: str, *, level: str = "info", expert: str | None = None) -> None:
    session.add(Event(run_id=run_id, level=level, expert=expert, message=message))


# ---- runs


def create_run(session: Session, *, spec: RunSpec, author: str, parent_run_id: int | None = None,
               parent_checkpoint_id: int | None = None, cycle: int = 0) -> Run:
    """A draft run with its experts and knob version 0 (the spec's knobs); 422 when a data file of the spec lies
    outside the allowed data roots (COPD_DATA_ROOTS)."""
    confined = [{"field": f, "message": m, "type": "path_outside_roots"} for f, m in data_path_errors(spec)]
    if confined:
        raise Invalid(one_line(confined), confined)
    run = Run(name=spec.name, strategy=spec.strategy, spec=spec.model_dump(mode="json"), status=DRAFT,
              cycle=cycle, parent_run_id=parent_run_id, parent_checkpoint_id=parent_checkpoint_id,
              experts=[Expert(name=e.name, domain=_domain_json(e.domain)) for e in spec.experts])
    session.add(run)
    session.flush()
    session.add(KnobVersion(run_id=run.id, version=0, values=knobs_from_spec(spec), changes={}, author=author))
    lineage = f" from run {parent_run_id} checkpoint {parent_checkpoint_id}" if parent_run_id else ""
    _event(session, run.id, f"created by {author}{lineage}")
    session.commit()
    return run


def _domain_json(domain: Any) -> Any:
    return domain if isinstance(domain, str) else domain.model_dump(mode="json")


def get_run(session: Session, *, run_id: int) -> Run:
    """The run with its experts, or 404."""
    run = session.scalars(select(Run).where(Run.id == run_id).options(selectinload(Run.experts))).first()
    if run is None:
        raise NotFound(f"run_id: no run {run_id}")
    return run


def list_runs(session: Session, *, statuses: Sequence[str] | None, limit: int, offset: int) -> tuple[list[Run], int]:
    """A page of runs, newest first, and how many match."""
    where = [Run.status.in_(statuses)] if statuses else []
    total = session.scalar(select(func.count()).select_from(Run).where(*where)) or 0
    q = select(Run).where(*where).order_by(Run.id.desc()).limit(limit).offset(offset)
    return list(session.scalars(q.options(selectinload(Run.experts)))), total


def delete_run(session: Session, *, run_id: int) -> None:
    """Delete a run and everything it owns; refused while active or while forks start from it."""
    run = get_run(session, run_id=run_id)
    if run.status in rules.ACTIVE:
        raise Conflict(f"run {run_id} is {run.status}; cancel it before deleting")
    forks = list(session.scalars(select(Run.id).where(Run.parent_run_id == run_id).order_by(Run.id)))
    if forks:
        raise Conflict(f"run {run_id} has forks (runs {', '.join(map(str, forks))}); delete them first")
    session.execute(delete(Run).where(Run.id == run_id))
    session.commit()


def fork_run(session: Session, *, run_id: int, checkpoint_id: int, name: str | None,
             overrides: dict[str, Any], author: str) -> Run:
    """A new draft run from a checkpoint of `run_id`, its spec the parent's with `overrides` deep-merged."""
    parent = get_run(session, run_id=run_id)
    ckpt = session.get(Checkpoint, checkpoint_id)
    if ckpt is None or ckpt.run_id != run_id:
        raise NotFound(f"checkpoint_id: run {run_id} has no checkpoint {checkpoint_id}")
    data = rules.deep_merge(parent.spec, overrides)
    data["name"] = name or overrides.get("name") or rules.fork_name(parent.name)
    try:
        spec = RunSpec.model_validate(data)
    except ValidationError as err:
        raise invalid_from(err, prefix="overrides") from None
    return create_run(session, spec=spec, author=author, parent_run_id=run_id,
                      parent_checkpoint_id=checkpoint_id, cycle=ckpt.cycle)


def transition(session: Session, *, run_id: int, rule: rules.Transition, verb: str, by: str,
               message: str | None = None, level: str = "info") -> tuple[Run, str]:
    """Move a run along the lifecycle (compare-and-set on status); returns (run, previous status).

    409 names the current state when the move is not allowed from it.
    """
    current = session.scalar(select(Run.status).where(Run.id == run_id))
    if current is None:
        raise NotFound(f"run_id: no run {run_id}")
    if current not in rule.allowed_from:
        allowed = " or ".join(sorted(rule.allowed_from))
        raise Conflict(f"run {run_id} is {current}; {verb} needs it {allowed}")
    now = utcnow()
    values: dict[str, Any] = {"status": rule.to, "status_changed_at": now}
    if rule.to == RUNNING:
        values["started_at"] = func.coalesce(Run.started_at, now)
    if rule.to in rules.TERMINAL:
        values["finished_at"] = now
    if rule.to == COMPLETED:
        values["progress"] = 1.0
    done = session.execute(update(Run).where(Run.id == run_id, Run.status == current).values(**values))
    if done.rowcount != 1:  # another request moved it between our read and write
        session.rollback()
        now_status = session.scalar(select(Run.status).where(Run.id == run_id))
        raise Conflict(f"run {run_id} is {now_status}; it changed while {verb} was being applied")
    text = f"{verb}: {current} → {rule.to} (by {by})" + (f": {message}" if message else "")
    _event(session, run_id, text, level=level)
    session.commit()
    return get_run(session, run_id=run_id), current


def report_progress(session: Session, *, run_id: int, report: ProgressReport) -> Run:
    """Record where a run is (cycle, phase, progress) and which unit an expert is on."""
    run = get_run(session, run_id=run_id)
    if run.status not in rules.REPORTING:
        raise Conflict(f"run {run_id} is {run.status}; progress is taken while queued, running or paused")
    cycles = int(run.spec["schedule"]["cycles"])
    if report.cycle > cycles:
        raise Invalid(f"cycle: {report.cycle} is beyond the run's {cycles} cycles")
    if report.expert is not None:
        expert = next((e for e in run.experts if e.name == report.expert), None)
        if expert is None:
            raise Invalid(f"expert: run {run_id} has no expert '{report.expert}'")
        expert.unit = report.unit
        expert.status = report.expert_status or ("running" if report.unit else expert.status)
    run.cycle, run.phase = report.cycle, report.phase
    run.progress = report.progress if report.progress is not None else rules.cycle_progress(report.cycle, cycles)
    session.commit()
    return run


# ---- knobs


def knob_history(session: Session, *, run_id: int) -> list[KnobVersion]:
    """All knob versions of a run, oldest first (404 for an unknown run)."""
    rows = list(session.scalars(select(KnobVersion).where(KnobVersion.run_id == run_id).order_by(KnobVersion.version)))
    if not rows:
        get_run(session, run_id=run_id)  # raises 404 for an unknown run
    return rows


def change_knobs(session: Session, *, run_id: int, expected_version: int, changes: dict[str, Any],
                 author: str) -> list[KnobVersion]:
    """Save a new knob version made against `expected_version` (409 when stale); returns the history."""
    run = get_run(session, run_id=run_id)
    if run.status in rules.TERMINAL:
        raise Conflict(f"run {run_id} is {run.status}; its knobs no longer change")
    clean = _clean_knob_changes(RunSpec.model_validate(run.spec), changes)
    history = knob_history(session, run_id=run_id)
    current = history[-1]
    if expected_version != current.version:
        raise Conflict(f"expected_version: {expected_version} is stale; the knobs are at version {current.version}")
    session.add(KnobVersion(run_id=run_id, version=current.version + 1, author=author, changes=clean,
                            values=rules.merge_knobs(current.values, clean)))
    _event(session, run_id, f"knobs v{current.version + 1} by {author}: {', '.join(sorted(clean))}")
    try:
        session.commit()
    except IntegrityError:  # another change for the same version won the race
        session.rollback()
        raise Conflict(f"expected_version: {expected_version} is stale; another change was just saved") from None
    return knob_history(session, run_id=run_id)


def _clean_knob_changes(spec: RunSpec, changes: dict[str, Any]) -> dict[str, Any]:
    if not changes:
        raise Invalid("changes: name at least one knob (beta, rl_steps, opd_steps, teacher_weights, lr)")
    nulls = sorted(k for k, v in changes.items() if v is None)
    if nulls:
        raise Invalid(f"changes.{nulls[0]}: must not be null")
    try:
        return validate_knob_changes(spec, changes)
    except ValidationError as err:
        raise invalid_from(err, prefix="changes") from None
    except ValueError as err:  # "beta.text: unknown expert"
        raise Invalid(f"changes.{err}") from None


def mark_knobs_applied(session: Session, *, run_id: int, version: int, cycle: int, step: int) -> list[KnobVersion]:
    """Record where a worker first applied a knob version; later reports change nothing."""
    row = session.scalar(select(KnobVersion).where(KnobVersion.run_id == run_id, KnobVersion.version == version))
    if row is None:
        get_run(session, run_id=run_id)
        raise NotFound(f"version: run {run_id} has no knob version {version}")
    if row.applied_at is None:
        row.applied_cycle, row.applied_step, row.applied_at = cycle, step, utcnow()
        _event(session, run_id, f"knobs v{version} applied at cycle {cycle} step {step}")
        session.commit()
    return knob_history(session, run_id=run_id)


# ---- metrics


def write_metrics(session: Session, *, run_id: int, points: Sequence[MetricPointIn]) -> int:
    """Upsert a batch in one transaction: validated whole first, a (run, expert, key, step) stored once."""
    run = get_run(session, run_id=run_id)
    owners = {e.name for e in run.experts} | set(SERIES_EXTRA)
    for i, p in enumerate(points):
        if p.expert is not None and p.expert not in owners:
            raise Invalid(f"points.{i}.expert: run {run_id} has no expert '{p.expert}'")
    now = time.time()
    rows: dict[tuple[str, str, int], dict[str, Any]] = {}  # the last of repeated points wins, as in the table
    for p in points:
        rows[(p.expert or "", p.key, p.step)] = {
            "run_id": run_id, "expert": p.expert or "", "key": p.key, "step": p.step, "value": p.value,
            "wall_time": now if p.wall_time is None else p.wall_time, "cycle": p.cycle}
    stmt = _insert(session)(Metric.__table__)
    stmt = stmt.on_conflict_do_update(index_elements=["run_id", "expert", "key", "step"],
                                      set_={"value": stmt.excluded.value, "wall_time": stmt.excluded.wall_time,
                                            "cycle": stmt.excluded.cycle})
    if session.get_bind().dialect.name == "postgresql":
        # Row locks are taken in the order rows are written: one fixed order for every batch, so two batches
        # with overlapping points wait for each other instead of deadlocking. (SQLite has one writer at a time.)
        values = [rows[k] for k in sorted(rows)]
    else:
        values = list(rows.values())
    for attempt in range(DEADLOCK_RETRIES + 1):
        try:
            for start in range(0, len(values), CHUNK):
                session.execute(stmt, values[start:start + CHUNK])
            session.commit()
            return len(values)
        except OperationalError as err:  # a deadlock or serialization failure: the whole batch again
            session.rollback()
            if attempt == DEADLOCK_RETRIES or not _is_transient_conflict(err):
                raise
    raise AssertionError("unreachable")


def _is_transient_conflict(err: OperationalError) -> bool:
    """PostgreSQL rolled the transaction back to break a deadlock or a serialization conflict (SQLSTATE 40xxx)."""
    return str(getattr(err.orig, "sqlstate", "") or "").startswith("40")


def read_series(session: Session, *, run_id: int, key: str | None, expert: str | None,
                max_points: int) -> list[Series]:
    """Series of a run by key and expert ('' = run-level), each min/max-downsampled to `max_points`."""
    get_run(session, run_id=run_id)
    where = [Metric.run_id == run_id]
    if key is not None:
        where.append(Metric.key == key)
    if expert is not None:
        where.append(Metric.expert == expert)
    found = session.execute(
        select(Metric.expert, Metric.key, func.count(), func.min(Metric.step), func.max(Metric.step))
        .where(*where).group_by(Metric.expert, Metric.key).order_by(Metric.key, Metric.expert)).all()
    out = []
    for e, k, n, lo, hi in found:
        if n <= max_points:
            rows = session.execute(select(Metric.step, Metric.value, Metric.wall_time, Metric.cycle).where(
                Metric.run_id == run_id, Metric.expert == e, Metric.key == k).order_by(Metric.step)).all()
        else:  # in SQL: only the kept points leave the database
            rows = _bucket_extremes(session, {"r": run_id, "e": e, "k": k, "lo": lo, "span": hi - lo + 1,
                                              "nb": max_points // 2})
        out.append(Series.model_construct(expert=e or None, key=k, points=[
            MetricPointOut.model_construct(step=s, value=v, wall_time=w, cycle=c) for s, v, w, c in rows]))
    return out


# Min/max downsampling in SQL, the same buckets as server.downsample.minmax_buckets (the reference):
# bucket = (step - lo) * nb / span, integer division; each bucket keeps its min and its max point,
# ties keeping the earliest step.
_SERIES = "FROM metrics WHERE run_id = :r AND expert = :e AND key = :k"
_BUCKET = "(step - :lo) * :nb / :span"
# SQLite: with a lone MIN() or MAX(), bare columns come from the row holding it; UNION drops a repeat.
_EXTREMES_SQLITE = text(f"""
SELECT step, MIN(value), wall_time, cycle {_SERIES} GROUP BY {_BUCKET}
UNION
SELECT step, MAX(value), wall_time, cycle {_SERIES} GROUP BY {_BUCKET}
ORDER BY 1""")
# PostgreSQL: arrays compare element by element, so min/max of [value, ±step, wall_time] is an arg-min /
# arg-max in one hash aggregate (no sort; window functions over 100k rows took 2-3 times longer).
_EXTREMES_PG = text(f"""
SELECT min(ARRAY[value, step::float8, wall_time, cycle::float8]),
       max(ARRAY[value, -step::float8, wall_time, cycle::float8])
{_SERIES} GROUP BY {_BUCKET}""")


def _bucket_extremes(session: Session, params: dict[str, Any]) -> list[tuple[int, float, float | None, int | None]]:
    if session.get_bind().dialect.name == "sqlite":
        return [tuple(r) for r in session.execute(_EXTREMES_SQLITE, params)]
    kept: dict[int, tuple[int, float, float | None, int | None]] = {}
    for lo_p, hi_p in session.execute(_EXTREMES_PG, params):
        kept[int(lo_p[1])] = (int(lo_p[1]), lo_p[0], lo_p[2], _int_or_none(lo_p[3]))
        kept[int(-hi_p[1])] = (int(-hi_p[1]), hi_p[0], hi_p[2], _int_or_none(hi_p[3]))
    return [kept[s] for s in sorted(kept)]


def _int_or_none(x: float | None) -> int | None:
    return None if x is None else int(x)


# ---- checkpoints


def register_checkpoint(session: Session, *, run_id: int, body: CheckpointCreate) -> tuple[Checkpoint, bool]:
    """Record a checkpoint; the same (expert, cycle, step) again updates it. Returns (checkpoint, created)."""
    run = get_run(session, run_id=run_id)
    if body.expert not in {e.name for e in run.experts} | set(SERIES_EXTRA):
        raise Invalid(f"expert: run {run_id} has no expert '{body.expert}'")
    fields = body.model_dump()
    ckpt = session.scalar(select(Checkpoint).where(
        Checkpoint.run_id == run_id, Checkpoint.expert == body.expert,
        Checkpoint.cycle == body.cycle, Checkpoint.step == body.step))
    created = ckpt is None
    if created:
        ckpt = Checkpoint(run_id=run_id, **fields)
        session.add(ckpt)
        _event(session, run_id, f"checkpoint {body.expert} cycle {body.cycle} step {body.step}", expert=body.expert)
    else:
        for k, v in fields.items():
            if k != "optimizer" or v is not None:
                setattr(ckpt, k, v)
        ckpt.deleted_at = None  # written again (a unit that ran again): its files are there
    if body.final:
        session.flush()
        _unmark_other_finals(session, ckpt)
    try:
        session.commit()
    except IntegrityError:  # the same checkpoint registered concurrently
        session.rollback()
        raise Conflict("checkpoint: registered concurrently by another request; retry") from None
    return ckpt, created


def _unmark_other_finals(session: Session, ckpt: Checkpoint) -> None:
    session.execute(update(Checkpoint).where(
        Checkpoint.run_id == ckpt.run_id, Checkpoint.expert == ckpt.expert, Checkpoint.id != ckpt.id,
        Checkpoint.final.is_(True)).values(final=False))


def get_checkpoint(session: Session, *, run_id: int, checkpoint_id: int) -> Checkpoint:
    ckpt = session.get(Checkpoint, checkpoint_id)
    if ckpt is None or ckpt.run_id != run_id:
        get_run(session, run_id=run_id)
        raise NotFound(f"checkpoint_id: run {run_id} has no checkpoint {checkpoint_id}")
    return ckpt


def mark_final(session: Session, *, run_id: int, checkpoint_id: int) -> Checkpoint:
    """Mark a checkpoint as its expert's final one (at most one per expert)."""
    ckpt = get_checkpoint(session, run_id=run_id, checkpoint_id=checkpoint_id)
    if not ckpt.final:
        ckpt.final = True
        _unmark_other_finals(session, ckpt)
        _event(session, run_id, f"checkpoint {ckpt.id} ({ckpt.expert} cycle {ckpt.cycle}) marked final",
               expert=ckpt.expert)
        session.commit()
    return ckpt


def mark_deleted(session: Session, *, run_id: int, checkpoint_id: int, reason: str) -> Checkpoint:
    """Record that a checkpoint's files were deleted (idempotent; a final checkpoint is never deleted: 409)."""
    ckpt = get_checkpoint(session, run_id=run_id, checkpoint_id=checkpoint_id)
    if ckpt.final:
        raise Conflict(f"checkpoint_id: checkpoint {checkpoint_id} is final; final models are always kept")
    if ckpt.deleted_at is None:
        ckpt.deleted_at = utcnow()
        _event(session, run_id, f"checkpoint {ckpt.id} ({ckpt.expert} cycle {ckpt.cycle} step {ckpt.step}) "
               f"deleted ({reason})", expert=ckpt.expert)
        session.commit()
    return ckpt


def list_checkpoints(session: Session, *, run_id: int, expert: str | None, final: bool | None,
                     limit: int, offset: int, deleted: bool | None = None) -> tuple[list[Checkpoint], int]:
    get_run(session, run_id=run_id)
    where = [Checkpoint.run_id == run_id]
    if expert is not None:
        where.append(Checkpoint.expert == expert)
    if final is not None:
        where.append(Checkpoint.final.is_(final))
    if deleted is not None:
        where.append(Checkpoint.deleted_at.is_not(None) if deleted else Checkpoint.deleted_at.is_(None))
    return _page(session, select(Checkpoint).where(*where).order_by(Checkpoint.id), limit, offset)


def _page(session: Session, q: Select, limit: int, offset: int) -> tuple[list[Any], int]:
    total = session.scalar(select(func.count()).select_from(q.order_by(None).subquery())) or 0
    return list(session.scalars(q.limit(limit).offset(offset))), total


# ---- events and heartbeats


def add_event(session: Session, *, run_id: int, level: str, message: str, expert: str | None) -> Event:
    get_run(session, run_id=run_id)
    ev = Event(run_id=run_id, level=level, expert=expert, message=message)
    session.add(ev)
    session.commit()
    return ev


def list_events(session: Session, *, run_id: int, after_id: int, level: str | None,
                limit: int) -> tuple[list[Event], int]:
    """Events after `after_id`, oldest first; the total counts all of them, past `limit` too."""
    get_run(session, run_id=run_id)
    where = [Event.run_id == run_id, Event.id > after_id]
    if level is not None:
        where.append(Event.level == level)
    return _page(session, select(Event).where(*where).order_by(Event.id), limit, 0)


def record_heartbeat(session: Session, *, run_id: int, unit: str, worker: str,
                     done: bool = False) -> tuple[Heartbeat, str]:
    """Upsert a unit's heartbeat (a `done` one removes the unit from those in flight); returns it with the
    run's status (409 once the run stopped)."""
    status = session.scalar(select(Run.status).where(Run.id == run_id))
    if status is None:
        raise NotFound(f"run_id: no run {run_id}")
    if done:  # accepted in any state: a unit that stopped because the run stopped is no longer in flight
        session.execute(delete(Heartbeat).where(Heartbeat.run_id == run_id, Heartbeat.unit == unit))
        session.commit()
        return Heartbeat(run_id=run_id, unit=unit, worker=worker, last_seen=utcnow()), status
    if status not in rules.REPORTING:
        raise Conflict(f"run {run_id} is {status}; stop the unit")
    stmt = _insert(session)(Heartbeat.__table__).values(run_id=run_id, unit=unit, worker=worker, last_seen=utcnow())
    stmt = stmt.on_conflict_do_update(index_elements=["run_id", "unit"],
                                      set_={"worker": stmt.excluded.worker, "last_seen": stmt.excluded.last_seen})
    session.execute(stmt)
    session.commit()
    hb = session.scalars(select(Heartbeat).where(Heartbeat.run_id == run_id, Heartbeat.unit == unit)
                         .execution_options(populate_existing=True)).one()
    return hb, status


def silent_runs(session: Session, *, cutoff: datetime) -> list[tuple[int, list[tuple[str, str, datetime]]]]:
    """Running runs whose units in flight all went silent before `cutoff`: (run id, [(unit, worker, last
    seen)], most recent first). Units in flight are those with a heartbeat since the run last started running
    and no `done` beat since; a run with none in flight is waiting for its next units (in the queue behind
    other runs' work, say), which is not a crash."""
    rows = session.execute(
        select(Run.id, Run.status_changed_at).where(Run.status == RUNNING, Run.status_changed_at < cutoff)).all()
    out = []
    for run_id, since in rows:
        units = session.execute(select(Heartbeat.unit, Heartbeat.worker, Heartbeat.last_seen).where(
            Heartbeat.run_id == run_id, Heartbeat.last_seen >= since).order_by(Heartbeat.last_seen.desc())).all()
        if units and units[0][2] < cutoff:
            out.append((run_id, [tuple(u) for u in units]))
    return out


def idle_runs(session: Session) -> list[int]:
    """Running runs with no unit in flight: no heartbeat since the run last started running, or only `done`
    ones (which remove the unit). Between two units that is normal for a moment; for long, a lost message."""
    return list(session.scalars(
        select(Run.id).where(Run.status == RUNNING, ~select(Heartbeat.unit).where(
            Heartbeat.run_id == Run.id, Heartbeat.last_seen >= Run.status_changed_at).exists()).order_by(Run.id)))


# ---- tokens


def find_token(session: Session, *, token_hash: str) -> Token | None:
    return session.scalar(select(Token).where(Token.hash == token_hash))


def create_token(session: Session, *, name: str, role: str, token_hash: str) -> Token:
    tok = Token(name=name, role=role, hash=token_hash)
    session.add(tok)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"name: a token named '{name}' exists") from None
    return tok


def ensure_admin_token(session: Session, *, name: str, token_hash: str) -> None:
    """Make the stored admin token the given one (the token may have changed since the last start)."""
    session.execute(delete(Token).where(Token.hash == token_hash, Token.name != name))
    tok = session.scalar(select(Token).where(Token.name == name))
    if tok is None:
        session.add(Token(name=name, role="admin", hash=token_hash))
    else:
        tok.hash, tok.role = token_hash, "admin"
    session.commit()


def list_tokens(session: Session) -> list[Token]:
    return list(session.scalars(select(Token).order_by(Token.id)))


def delete_token(session: Session, *, token_id: int, protected: Iterable[str]) -> None:
    tok = session.get(Token, token_id)
    if tok is None:
        raise NotFound(f"token_id: no token {token_id}")
    if tok.name in set(protected):
        raise Conflict(f"token_id: '{tok.name}' is the admin token; change COPD_API_TOKEN or the token file instead")
    session.delete(tok)
    session.commit()


# ---- unit markers and leases (worker hosts without a shared disk)


def list_markers(session: Session, *, run_id: int, kind: str | None) -> list[UnitMarker]:
    get_run(session, run_id=run_id)
    where = [UnitMarker.run_id == run_id] + ([UnitMarker.kind == kind] if kind else [])
    return list(session.scalars(select(UnitMarker).where(*where).order_by(UnitMarker.id)))


def put_marker(session: Session, *, run_id: int, kind: str, name: str, body: dict[str, Any],
               exclusive: bool) -> tuple[UnitMarker, bool]:
    """Insert or replace a marker; `exclusive`: 409 when it exists (a claim). Returns (marker, created)."""
    get_run(session, run_id=run_id)
    where = (UnitMarker.run_id == run_id, UnitMarker.kind == kind, UnitMarker.name == name)
    marker = session.scalar(select(UnitMarker).where(*where))
    if marker is not None:
        if exclusive:
            raise Conflict(f"name: marker {kind} '{name}' exists (by {marker.body.get('by', '?')})")
        marker.body = body
        session.commit()
        return marker, False
    marker = UnitMarker(run_id=run_id, kind=kind, name=name, body=body)
    session.add(marker)
    try:
        session.commit()
    except IntegrityError:  # the same marker inserted concurrently
        session.rollback()
        if exclusive:
            raise Conflict(f"name: marker {kind} '{name}' was created concurrently") from None
        return put_marker(session, run_id=run_id, kind=kind, name=name, body=body, exclusive=False)
    return marker, True


def take_lease(session: Session, *, run_id: int, unit: str, worker: str, ttl_s: float) -> tuple[Heartbeat, bool]:
    """The unit's heartbeat row is its lease: granted (and renewed, as a heartbeat) unless another worker's
    beat of it is younger than `ttl_s`; a `done` heartbeat deletes the row, releasing it."""
    get_run(session, run_id=run_id)
    hb = session.scalar(select(Heartbeat).where(Heartbeat.run_id == run_id, Heartbeat.unit == unit)
                        .with_for_update())
    now = utcnow()
    if hb is not None and hb.worker != worker and (now - hb.last_seen).total_seconds() < ttl_s:
        session.rollback()
        return hb, False
    if hb is None:
        hb = Heartbeat(run_id=run_id, unit=unit, worker=worker, last_seen=now)
        session.add(hb)
    else:
        hb.worker, hb.last_seen = worker, now
    try:
        session.commit()
    except IntegrityError:  # another worker took it at the same moment
        session.rollback()
        hb = session.scalars(select(Heartbeat).where(Heartbeat.run_id == run_id, Heartbeat.unit == unit)).one()
        return hb, hb.worker == worker
    return hb, True


# ---- sample prompts


def put_samples(session: Session, *, run_id: int, cycle: int, samples: Sequence[PromptSample]) -> int:
    """Store an evaluation's sample prompts; a (domain, index) the cycle has already is updated, its answers
    merged by model (the last write of a model wins). All or nothing; returns the prompts written."""
    get_run(session, run_id=run_id)
    for attempt in range(3):
        try:
            _put_samples(session, run_id, cycle, samples)
            session.commit()
            return len(samples)
        except IntegrityError:  # the same prompt inserted concurrently: read it back and merge into it
            session.rollback()
            if attempt == 2:
                raise Conflict(f"samples: cycle {cycle}'s samples are being written concurrently; retry") from None
    return 0  # unreachable


def _put_samples(session: Session, run_id: int, cycle: int, samples: Sequence[PromptSample]) -> None:
    rows = {(r.domain, r.position): r for r in session.scalars(
        select(SamplePrompt).where(SamplePrompt.run_id == run_id, SamplePrompt.cycle == cycle))}
    for s in samples:
        answers = {a.model: {"answer": a.answer, "score": a.score, "correct": a.correct} for a in s.answers}
        row = rows.get((s.domain, s.index))
        if row is None:
            row = SamplePrompt(run_id=run_id, cycle=cycle, domain=s.domain, position=s.index, prompt=s.prompt,
                               reference=s.reference, images=list(s.images), answers=answers)
            session.add(row)
            rows[(s.domain, s.index)] = row
        else:
            row.prompt, row.reference, row.images = s.prompt, s.reference, list(s.images)
            row.answers = {**row.answers, **answers}  # a new dict: the JSON column sees the change
    session.flush()


def read_samples(session: Session, *, run_id: int, cycle: int | None) -> tuple[int | None, list[int], list[SamplePrompt]]:
    """(the cycle shown, every cycle with samples, its prompts by domain then index); `cycle` None: the latest."""
    get_run(session, run_id=run_id)
    cycles = list(session.scalars(select(SamplePrompt.cycle).where(SamplePrompt.run_id == run_id)
                                  .distinct().order_by(SamplePrompt.cycle)))
    shown = cycles[-1] if cycle is None and cycles else cycle
    if shown is None:
        return None, cycles, []
    rows = list(session.scalars(select(SamplePrompt).where(SamplePrompt.run_id == run_id, SamplePrompt.cycle == shown)
                                .order_by(SamplePrompt.id)))
    first = {}
    for r in rows:  # domains in the order first reported
        first.setdefault(r.domain, len(first))
    return shown, cycles, sorted(rows, key=lambda r: (first[r.domain], r.position))

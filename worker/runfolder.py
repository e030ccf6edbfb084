"""A run's folder as the workers' shared memory: which units are done, who runs a unit, which phase was sent.

Everything here is a file under `<data_dir>/runs/<run_id>/` (a shared folder in labs):
  - `units/<unit>.done`     — written atomically when a unit finished (JSON summary); the join decides the
                              next phase from these alone, so it is idempotent and survives any crash;
  - `units/<unit>.lock`     — an flock held while a worker runs the unit; the kernel drops it when the
                              process dies (SIGKILL too), so a second delivery waits for a live holder and
                              takes over from a dead one;
  - `units/<phase>.sent`    — the join that dispatched a phase, so a duplicate join sends nothing.

With a checkpoint store (COPD_CHECKPOINT_URL) worker hosts share no disk, so the same markers live in the
API's database instead (`ApiRunFolder`): done and sent markers at /runs/{id}/markers, and the unit's lock is
a lease on its heartbeat row (/runs/{id}/leases), which the unit's heartbeats renew and its last one drops;
a holder that died is taken over once its last beat is older than COPD_LEASE_TTL_S.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.plan import Unit, plan, steps_of
from contract.spec import RunSpec


@dataclass(frozen=True)
class Phase:
    """The units of one chord: the experts of (cycle, rl|opd), or one eval, lockstep or merge unit."""

    id: str            # `c1/rl`, `c1/opd`, `c1/eval`, `c0/eval`, `final/merge`
    cycle: int
    kind: str
    units: tuple[Unit, ...]


def phases(spec: RunSpec) -> list[Phase]:
    """The run's plan (trainer.schedule.plan) cut into phases, in order."""
    out: list[Phase] = []
    for unit in plan(spec):
        pid = unit.id if unit.expert is None else f"c{unit.cycle}/{unit.kind}"
        if out and out[-1].id == pid:
            out[-1] = Phase(pid, unit.cycle, unit.kind, out[-1].units + (unit,))
        else:
            out.append(Phase(pid, unit.cycle, unit.kind, (unit,)))
    return out


def unit_of(spec: RunSpec, unit_id: str) -> Unit:
    """The plan's unit with this id (so `final/merge` carries the last cycle); ValueError when not planned."""
    for unit in plan(spec):
        if unit.id == unit_id:
            return unit
    raise ValueError(f"unit '{unit_id}' is not in the run's plan")


def unit_weight(spec: RunSpec, unit: Unit) -> int:
    """Share of the run a unit stands for in the progress bar: one per training step, one per eval or merge."""
    if unit.kind in ("mixed", "distill"):
        return max(steps_of(spec, unit), 1)
    return {"rl": spec.schedule.rl_steps, "opd": spec.schedule.opd_steps,
            "lockstep": spec.schedule.opd_steps * len(spec.experts)}.get(unit.kind, 1)


def _name(unit_or_phase_id: str) -> str:
    return unit_or_phase_id.replace("/", "_")


def write_atomic(path: Path, text: str) -> None:
    """Write, fsync and rename into place: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, say: no partial file stays behind
        tmp.unlink(missing_ok=True)
        raise


class RunFolder:
    """The marker files of one run."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.units_dir = self.root / "units"

    # ---- done markers ----------------------------------------------------------------------------
    def is_done(self, unit_id: str) -> bool:
        return (self.units_dir / f"{_name(unit_id)}.done").exists()

    def mark_done(self, unit_id: str, summary: dict[str, Any]) -> None:
        write_atomic(self.units_dir / f"{_name(unit_id)}.done", json.dumps({"unit": unit_id, **summary}, default=str))

    def done(self, spec: RunSpec) -> set[str]:
        return {u.id for u in plan(spec) if self.is_done(u.id)}

    def next_phase(self, spec: RunSpec) -> Phase | None:
        """The first phase with a unit not done; None when the whole run is done."""
        done = self.done(spec)
        return next((p for p in phases(spec) if not all(u.id in done for u in p.units)), None)

    def phase_done(self, spec: RunSpec, phase_id: str) -> bool:
        phase = next((p for p in phases(spec) if p.id == phase_id), None)
        done = self.done(spec)
        return phase is not None and all(u.id in done for u in phase.units)

    # ---- the fork's seed -------------------------------------------------------------------------
    def seeded(self) -> bool:
        """The fork's parent checkpoints were copied (worker.fork)."""
        return (self.root / "fork.json").exists()

    def mark_seeded(self, body: dict[str, Any]) -> None:
        write_atomic(self.root / "fork.json", json.dumps(body))

    # ---- dispatch claims -------------------------------------------------------------------------
    def claim(self, phase_id: str, by: str, *, force: bool = False) -> bool:
        """Record that `by` dispatches `phase_id`; False when someone already did (unless `force`)."""
        path = self.units_dir / f"{_name(phase_id)}.sent"
        self.units_dir.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"phase": phase_id, "by": by, "time": time.time()})
        if force:
            write_atomic(path, body)
            return True
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(body)
        return True

    # ---- unit locks ------------------------------------------------------------------------------
    @contextmanager
    def lock(self, unit_id: str, *, wait: Callable[[], bool], poll_s: float = 1.0,
             worker: str = "worker") -> Iterator[None]:
        """Hold the unit's lock; while another live process holds it, call `wait()` every `poll_s` seconds
        (it returns False to give up, which raises LockAbandoned)."""
        self.units_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.units_dir / f"{_name(unit_id)}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as err:
                    if err.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                if not wait():
                    raise LockAbandoned(unit_id)
                time.sleep(poll_s)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.uname().nodename} {os.getpid()}\n".encode())
            yield
        finally:
            os.close(fd)  # closing the descriptor drops the flock


class LockAbandoned(Exception):
    """Gave up waiting for another worker's lock on a unit."""


class ApiRunFolder(RunFolder):
    """The same markers in the API's database, for worker hosts that share no disk (a checkpoint store)."""

    def __init__(self, root: Path, api, run_id: int, *, lease_ttl_s: float = 30.0) -> None:
        super().__init__(root)
        self.api, self.run_id, self.lease_ttl_s = api, run_id, lease_ttl_s

    def _markers(self, kind: str) -> dict[str, dict[str, Any]]:
        return {m.name: m.body for m in self.api.list_markers(self.run_id, kind=kind).items}

    def is_done(self, unit_id: str) -> bool:
        return unit_id in self._markers("done")

    def mark_done(self, unit_id: str, summary: dict[str, Any]) -> None:
        self.api.put_marker(self.run_id, "done", unit_id, json.loads(json.dumps({"unit": unit_id, **summary},
                                                                                default=str)))

    def done(self, spec: RunSpec) -> set[str]:
        marked = self._markers("done")
        return {u.id for u in plan(spec) if u.id in marked}

    def seeded(self) -> bool:
        return "fork" in self._markers("fork")

    def mark_seeded(self, body: dict[str, Any]) -> None:
        self.api.put_marker(self.run_id, "fork", "fork", body)

    def claim(self, phase_id: str, by: str, *, force: bool = False) -> bool:
        from contract.client import ApiError

        body = {"phase": phase_id, "by": by, "time": time.time()}
        try:
            self.api.put_marker(self.run_id, "sent", phase_id, body, exclusive=not force)
            return True
        except ApiError as err:
            if err.status != 409:
                raise
            # ours after all when a retried request had reached the server
            return self._markers("sent").get(phase_id, {}).get("by") == by

    @contextmanager
    def lock(self, unit_id: str, *, wait: Callable[[], bool], poll_s: float = 1.0,
             worker: str = "worker") -> Iterator[None]:
        while not self.api.lease(self.run_id, unit_id, worker, self.lease_ttl_s).granted:
            if not wait():
                raise LockAbandoned(unit_id)
            time.sleep(poll_s)
        try:
            yield
        finally:
            try:  # released (a unit that ran already sent this as its last heartbeat)
                self.api.heartbeat(self.run_id, unit_id, worker, done=True)
            except Exception as err:  # the lease then lapses after its ttl
                import logging
                logging.getLogger("copd.worker").warning("run %d unit %s: lease not released (%s)",
                                                         self.run_id, unit_id, err)

"""The exporter of one copd run: an outbox on disk, one cursor per tracker, retries; never blocks training.

Points, events and knob changes are appended to `<folder>/outbox.jsonl` (a point (expert, key, step) once:
a point sent again — a retried POST, a unit run again after a crash — is not exported twice). A background
thread delivers each tracker's records from its own byte offset (`cursors.json`), so a tracker that is down
falls behind while the others keep up; it is retried with backoff, and when it is back the gap is reported
as an event of the copd run (which the trackers receive as an event too). What a tracker has not received when the run ends
stays in the outbox and is delivered when the exporter is opened again (the API's restart, `--resume`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from integrations.trackers import Point, RunInfo, Tracker

log = logging.getLogger("copd.integrations")
BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
BATCH = 2000  # records per delivery call


class _State:
    """A tracker's delivery state (in memory; its offset is also in cursors.json)."""

    def __init__(self, tracker: Tracker, offset: int):
        self.tracker, self.offset = tracker, offset
        self.opened = False
        self.down_since: float | None = None
        self.failures = 0
        self.next_try = 0.0
        self.late = 0


class RunExporter:
    """One copd run mirrored to its trackers; `report(level, message)` tells the copd run what happened."""

    def __init__(self, run: RunInfo, trackers: list[Tracker], folder: Path,
                 report: Callable[[str, str], None] = lambda level, message: None, interval_s: float = 1.0,
                 backoff_s: tuple[float, ...] = BACKOFF_S):
        self.run, self.folder, self.report = run, Path(folder), report
        self.interval_s, self.backoff_s = interval_s, backoff_s
        self.folder.mkdir(parents=True, exist_ok=True)
        self.outbox = self.folder / "outbox.jsonl"
        self._lock = threading.Lock()          # the outbox file
        self._deliver_lock = threading.RLock()  # one delivery pass at a time (the thread's, close's)
        self._closed: int | None = None
        self._seen: set[tuple[str, str, int]] = set()
        if self.outbox.exists():
            with open(self.outbox, encoding="utf-8") as f:
                for line in f:
                    r = _record(line)
                    if r is not None and r["t"] == "p":
                        self._seen.add((r["expert"] or "", r["key"], r["step"]))
        cursors = _read_json(self.folder / "cursors.json")
        self.states = [_State(t, int(cursors.get(t.name, 0))) for t in trackers]
        self._out = open(self.outbox, "a", encoding="utf-8")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- what the run produces (cheap: an append to the outbox) -------------------------------------
    def add_points(self, points: Iterable[Point]) -> int:
        """Queue the points not exported before; returns how many were new."""
        new = 0
        with self._lock:
            if self._out.closed:  # the run ended; a late point is in the copd database, not the trackers
                return 0
            for p in points:
                k = (p.expert or "", p.key, int(p.step))
                if k in self._seen:
                    continue
                self._seen.add(k)
                self._out.write(json.dumps({"t": "p", "expert": p.expert, "key": p.key, "step": int(p.step),
                                            "value": float(p.value), "wall_time": p.wall_time, "cycle": p.cycle}) + "\n")
                new += 1
            self._out.flush()
        if new:
            self._wake.set()
        return new

    def add_event(self, message: str, wall_time: float | None = None, step: int = 0) -> None:
        self._append({"t": "e", "message": message, "wall_time": wall_time or time.time(), "step": step})

    def add_knobs(self, version: int, changes: dict[str, Any], wall_time: float | None = None) -> None:
        self._append({"t": "k", "version": version, "changes": changes, "wall_time": wall_time or time.time()})

    def _append(self, record: dict[str, Any]) -> None:
        with self._lock:
            if self._out.closed:
                return
            self._out.write(json.dumps(record) + "\n")
            self._out.flush()
        self._wake.set()

    # ---- delivery ----------------------------------------------------------------------------------
    def start(self) -> "RunExporter":
        """Deliver in a background thread until `close`."""
        self._thread = threading.Thread(target=self._loop, name=f"copd-export-{self.run.key}", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.pump()
            except Exception:  # noqa: BLE001 - the exporter never takes the process down
                log.exception("export of %s: pass failed", self.run.key)
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def pending(self) -> int:
        """Records some tracker has not received yet."""
        size = self.outbox.stat().st_size
        return sum(1 for s in self.states if s.offset < size)

    def pump(self, now: float | None = None) -> None:
        """One delivery pass over every tracker that is due."""
        with self._deliver_lock:
            if self._closed is None:
                self._pump(now)

    def _pump(self, now: float | None) -> None:
        for s in self.states:
            now = time.time() if now is None else now
            if s.next_try > now:
                continue
            try:
                self._deliver(s)
            except Exception as err:  # noqa: BLE001 - any failure of a tracker library or its server
                self._failed(s, err)

    def _deliver(self, s: _State) -> None:
        if not s.opened:
            s.tracker.open(self.run)
            s.opened = True
        while True:
            records, end = self._read(s.offset)
            if not records:
                break
            points = []
            for r in records:
                if r["t"] == "p":
                    points.append(Point(r["expert"], r["key"], r["step"], r["value"], r["wall_time"], r.get("cycle")))
                    continue
                if points:
                    s.tracker.log(points)
                    points = []
                if r["t"] == "e":
                    s.tracker.event(r["message"], r["wall_time"], r.get("step", 0))
                elif r["t"] == "k":
                    s.tracker.knobs(r["version"], r["changes"], r["wall_time"])
            if points:
                s.tracker.log(points)
            if s.down_since is not None:
                s.late += len(records)
            s.offset = end
            self._save_cursors()
        if s.down_since is not None:
            gap = time.time() - s.down_since
            msg = (f"tracker {s.tracker.name} is back after {gap:.0f} s ({s.failures} failed tries); "
                   f"{s.late} buffered records delivered, none lost")
            s.down_since, s.failures, s.late = None, 0, 0
            self.report("info", msg)  # the copd run's event, which reaches the trackers as one too

    def _failed(self, s: _State, err: BaseException) -> None:
        why = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        if isinstance(err, ImportError):
            why += " — install the trackers extra: pip install 'copd[trackers]'"
        s.failures += 1
        s.next_try = time.time() + self.backoff_s[min(s.failures - 1, len(self.backoff_s) - 1)]
        if s.down_since is None:
            s.down_since = time.time()
            self.report("warning", f"tracker {s.tracker.name} unreachable ({why}); its points wait in "
                                   f"{self.outbox} and are retried (training goes on)")
        log.warning("export of %s to %s failed (%s)", self.run.key, s.tracker.name, why)
        if not s.opened:
            return
        try:  # a broken connection may need a fresh open
            s.tracker.finish("running")
        except Exception:  # noqa: BLE001
            pass
        s.opened = False

    def _read(self, offset: int) -> tuple[list[dict[str, Any]], int]:
        with self._lock:
            if not self._out.closed:
                self._out.flush()
            with open(self.outbox, "rb") as f:
                f.seek(offset)
                records = []
                for _ in range(BATCH):
                    line = f.readline()
                    if not line.endswith(b"\n"):
                        break
                    offset += len(line)
                    if (r := _record(line.decode("utf-8"))) is not None:
                        records.append(r)
        return records, offset

    def _save_cursors(self) -> None:
        tmp = self.folder / ".cursors.json.tmp"
        tmp.write_text(json.dumps({s.tracker.name: s.offset for s in self.states}))
        os.replace(tmp, self.folder / "cursors.json")

    def close(self, status: str, wait_s: float = 10.0) -> int:
        """Deliver what is left (trying for up to `wait_s`), end the tracker runs; returns records left undelivered.
        A second call waits for the first and returns its answer."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=wait_s)
        with self._deliver_lock:
            if self._closed is None:
                self._closed = self._close(status, wait_s)
            return self._closed

    def _close(self, status: str, wait_s: float) -> int:
        deadline = time.time() + wait_s
        while self.pending() and time.time() < deadline:
            self._pump(None)
            if self.pending():
                due = min((s.next_try for s in self.states), default=0.0)
                time.sleep(max(0.05, min(due - time.time(), deadline - time.time(), 1.0)))
        left = self.pending()
        for s in self.states:
            if s.opened:
                try:
                    s.tracker.finish(status)
                except Exception as err:  # noqa: BLE001
                    log.warning("export of %s: %s did not finish cleanly (%s)", self.run.key, s.tracker.name, err)
        if left:
            self.report("warning", f"{left} tracker(s) did not get every record before the run ended; they stay in "
                                   f"{self.outbox} and are delivered when the export is opened again")
        with self._lock:
            self._out.close()
        return left


def _record(line: str) -> dict[str, Any] | None:
    try:
        r = json.loads(line)
    except ValueError:
        return None
    return r if isinstance(r, dict) and "t" in r else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}

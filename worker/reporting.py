"""The trainer's Reporter over the REST API, and a unit's heartbeat thread."""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable, Sequence

from contract.client import ApiError, Client
from contract.plan import Unit
from contract.schemas import PromptSample
from contract.spec import Knobs
from contract.vocab import RUNNING, TERMINAL
from trainer.checkpoint import CheckpointInfo

log = logging.getLogger("copd.worker")
SAMPLES_PER_POST = 16


def api_cycle(unit: Unit, cycles: int) -> int:
    """The cycle the API is told: baselines' distillation units come after the run's last cycle."""
    return min(unit.cycle, cycles)


class Heartbeats:
    """POSTs a heartbeat every `interval_s` while a unit runs; `stopped` turns True when the API answers 409
    (the run was cancelled or is over)."""

    def __init__(self, api: Client, run_id: int, unit: str, worker: str, interval_s: float) -> None:
        # its own connection, and no long retries: a missed beat is simply sent again at the next one
        self.api = api.clone(retry_s=0.0, timeout=max(interval_s, 5.0))
        self.run_id, self.unit, self.worker, self.interval_s = run_id, unit, worker, interval_s
        self.stopped = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat {unit}", daemon=True)

    def __enter__(self) -> "Heartbeats":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)
        try:  # the unit is no longer in flight: its silence from now on is not a crash
            self.api.heartbeat(self.run_id, self.unit, self.worker, done=True)
        except ApiError as err:
            log.warning("last heartbeat of run %d unit %s: %s", self.run_id, self.unit, err)
        finally:
            self.api.close()

    def _loop(self) -> None:
        while not self._done.is_set():
            try:
                self.api.heartbeat(self.run_id, self.unit, self.worker)
            except ApiError as err:
                if err.status == 409:
                    self.stopped = True
                else:
                    log.warning("heartbeat of run %d unit %s: %s", self.run_id, self.unit, err)
            self._done.wait(self.interval_s)


class RestReporter:
    """trainer.reporter.Reporter over REST: metrics (one batch per call, i.e. per step), checkpoints,
    events, knobs, progress; `should_stop` is the run's cancellation (or this worker's shutdown)."""

    def __init__(self, api: Client, run_id: int, unit: Unit, *, cycles: int, applied: set[int],
                 progress_span: tuple[float, float], stop_check_s: float, step_delay_s: float,
                 shutting_down: Callable[[], bool], heartbeats: Heartbeats | None = None,
                 publish: Callable[[CheckpointInfo], tuple[CheckpointInfo, bool | None]] | None = None) -> None:
        self.api, self.run_id, self.unit, self.cycles = api, run_id, unit, cycles
        self.applied = applied                # knob versions already reported for this run (by this process)
        self.progress_span = progress_span    # (share of the run done before this unit, this unit's share)
        self.stop_check_s, self.step_delay_s = stop_check_s, step_delay_s
        self.shutting_down, self.heartbeats = shutting_down, heartbeats
        self.checkpoints: list[int] = []      # ids of the checkpoint records this unit registered
        self.publish = publish                # retention's optimizer rule, the upload to the checkpoint store
        self._knobs: tuple[int, Knobs] | None = None
        self._status: tuple[float, str] = (0.0, RUNNING)

    # ---- what the unit produced -----------------------------------------------------------------
    def metrics(self, expert: str | None, cycle: int, step: int, values: dict[str, float]) -> None:
        now = time.time()
        points, dropped = [], []
        for key, value in values.items():
            v = float(value)
            if math.isfinite(v):
                points.append({"expert": expert, "key": key, "step": step, "cycle": cycle, "value": v,
                               "wall_time": now})
            else:
                dropped.append(key)
        if points:
            self.api.post_metrics(self.run_id, points)
        if dropped:
            self.event(f"{self.unit.id}: non-finite {', '.join(dropped)} at step {step} not recorded",
                       level="warning", expert=expert)

    def checkpoint(self, info: CheckpointInfo) -> None:
        optimizer = None
        if self.publish is not None:
            info, optimizer = self.publish(info)
        rec = self.api.register_checkpoint(self.run_id, expert=info.expert, cycle=info.cycle, step=info.step,
                                           uri=info.uri, sha256=info.sha256, bytes=info.bytes, final=info.final,
                                           optimizer=optimizer)
        self.checkpoints.append(rec.id)

    def samples(self, cycle: int, samples: Sequence[PromptSample]) -> None:
        """POST them, 16 prompts a request (well under the route's 64 prompts and 4 MiB)."""
        items = list(samples)
        for i in range(0, len(items), SAMPLES_PER_POST):
            try:
                self.api.post_samples(self.run_id, min(cycle, self.cycles), items[i:i + SAMPLES_PER_POST])
            except ApiError as err:
                if err.status not in (413, 422):  # what the dashboard shows must never fail the unit
                    raise
                self.event(f"{self.unit.id}: sample prompts not recorded: {err.message}", level="warning")

    def event(self, message: str, *, level: str = "info", expert: str | None = None) -> None:
        self.api.post_event(self.run_id, message[:10_000], level=level, expert=expert)

    # ---- knobs -----------------------------------------------------------------------------------
    def knobs(self) -> tuple[int, Knobs]:
        """The latest version (one small GET per step boundary; values are re-read only when it changed)."""
        knobs = self.api.get_knobs(self.run_id)
        if self._knobs is None or knobs.version != self._knobs[0]:
            self._knobs = (knobs.version, knobs.values)
            if knobs.version:
                log.info("run %d unit %s: knobs version %d %s", self.run_id, self.unit.id, knobs.version, knobs.values)
        return self._knobs

    def knobs_applied(self, version: int, cycle: int, step: int) -> None:
        if version > 0 and version not in self.applied:
            self.api.knobs_applied(self.run_id, version, cycle, step)
            self.applied.add(version)

    # ---- progress and stopping -------------------------------------------------------------------
    def progress(self, unit: str, step: int, total: int, fields: dict[str, Any]) -> None:
        before, share = self.progress_span
        overall = min(0.99, before + share * step / max(total, 1))
        try:
            self.api.report_progress(self.run_id, cycle=api_cycle(self.unit, self.cycles), phase=self.unit.kind,
                                     expert=self.unit.expert,
                                     unit=self.unit.id if self.unit.expert else None,
                                     progress=overall)
        except ApiError as err:
            if err.status != 409:  # 409: the run stopped; should_stop will say so at the step boundary
                raise
        if self.step_delay_s and step < total:
            time.sleep(self.step_delay_s)

    def should_stop(self) -> bool:
        """True once the run is cancelled (or failed, or over), or this worker is shutting down."""
        if self.shutting_down() or (self.heartbeats is not None and self.heartbeats.stopped):
            return True
        checked, status = self._status
        if time.monotonic() - checked >= self.stop_check_s:
            status = self.api.get_run(self.run_id).status
            self._status = (time.monotonic(), status)
        return status in TERMINAL  # a unit of a run that is over stops at its next step

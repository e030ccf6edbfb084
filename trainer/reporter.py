"""The Reporter: how the training core talks to the outside (metrics, checkpoints, events, knobs).

The core calls it and never knows whether a JSON-lines file, a console or the REST API is behind it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from contract.schemas import PromptSample
from contract.spec import Knobs, merge_knobs
from trainer.checkpoint import CheckpointInfo


class Reporter(Protocol):
    """Interface the training loop calls; implementations: JsonlReporter here, the REST reporter in worker/."""

    def metrics(self, expert: str | None, cycle: int, step: int, values: dict[str, float]) -> None:
        """Record metric points (one per key) of an expert (or 'merged', or None for run-level)."""

    def checkpoint(self, info: CheckpointInfo) -> None:
        """A checkpoint was written."""

    def samples(self, cycle: int, samples: Sequence[PromptSample]) -> None:
        """An evaluation's sample prompts with each policy's answer (the dashboard's Samples section).
        Optional: the units call it through `trainer.samples.report_samples`, which skips a reporter
        without it; subclasses of `Reporter` get this no-op."""
        return None

    def event(self, message: str, *, level: str = "info", expert: str | None = None) -> None:
        """A human-readable happening: phase changes, warnings, errors."""

    def knobs(self) -> tuple[int, Knobs | Mapping[str, Any]]:
        """The latest knob values and their version (cheap; called at every step boundary). Units read them
        through `Knobs.coerce`, so a plain mapping of knob values also does (tests' recorders)."""

    def knobs_applied(self, version: int, cycle: int, step: int) -> None:
        """A knob version took effect at this cycle and step."""

    def progress(self, unit: str, step: int, total: int, fields: dict[str, Any]) -> None:
        """Where a unit stands (for progress bars and heartbeats)."""

    def should_stop(self) -> bool:
        """True when the run was cancelled: the loop stops at the next step boundary."""


class JsonlReporter:
    """Writes DIR/metrics.jsonl, DIR/events.jsonl and DIR/samples.jsonl; knobs come from the spec, or
    DIR/knobs.json when present.

    Editing DIR/knobs.json (`{"beta": 0.5}`) while `copd train` runs changes the knobs at the next step
    boundary: a file-based stand-in for the API's knob PATCH. The file holds changes from the spec's knobs,
    merged by the API's rule (`merge_knobs`: one teacher weight or one expert's β can change alone).
    """

    def __init__(self, out_dir: Path, initial_knobs: Knobs | Mapping[str, Any], display=None, sink=None):
        self.out_dir = Path(out_dir)
        self.sink = sink  # also told every metric and event (the local runner's trackers and alerts)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._events = open(self.out_dir / "events.jsonl", "a", encoding="utf-8")
        self._base_knobs = Knobs.coerce(initial_knobs)
        self._knob_file = self.out_dir / "knobs.json"
        self._knob_mtime: float | None = None
        self._knobs: tuple[int, Knobs] = (0, self._base_knobs)
        self._applied: set[int] = set()
        self.display = display

    # -- metrics and events ---------------------------------------------------------------------
    def metrics(self, expert: str | None, cycle: int, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self._metrics.write(json.dumps({"expert": expert, "cycle": cycle, "step": step, "key": key,
                                            "value": float(value)}) + "\n")
        if self.sink is not None:
            self.sink.metrics(expert, cycle, step, values)
        if self.display is not None:
            self.display.metrics(expert, cycle, step, values)

    def samples(self, cycle: int, samples: Sequence[PromptSample]) -> None:
        """One line per prompt: {cycle, domain, index, prompt, reference, images (base64 PNG), answers}."""
        with open(self.out_dir / "samples.jsonl", "a", encoding="utf-8") as f:
            for s in samples:
                f.write(json.dumps({"cycle": cycle, **s.model_dump(mode="json")}) + "\n")

    def checkpoint(self, info: CheckpointInfo) -> None:
        self.event(f"checkpoint {info.uri} ({info.bytes / 1e6:.1f} MB)", expert=info.expert)

    def event(self, message: str, *, level: str = "info", expert: str | None = None) -> None:
        self._events.write(json.dumps({"time": time.time(), "level": level, "expert": expert, "message": message}) + "\n")
        if self.sink is not None:
            self.sink.event(message, level=level, expert=expert)
        if self.display is not None:
            self.display.event(message, level=level, expert=expert)

    # -- knobs ----------------------------------------------------------------------------------
    def knobs(self) -> tuple[int, Knobs]:
        try:
            mtime = self._knob_file.stat().st_mtime
        except FileNotFoundError:
            return self._knobs
        if mtime != self._knob_mtime:
            self._knob_mtime = mtime
            try:
                changes = json.loads(self._knob_file.read_text())
                if isinstance(changes, dict):
                    values = Knobs.model_validate(merge_knobs(self._base_knobs.model_dump(), changes))
                    self._knobs = (self._knobs[0] + 1, values)
                    if self.sink is not None:
                        self.sink.knobs(self._knobs[0], changes)
            except ValueError as err:  # not JSON, or not valid knob values (pydantic's error is a ValueError)
                why = "not valid JSON" if isinstance(err, json.JSONDecodeError) else f"invalid knobs ({err})"
                self.event(f"{self._knob_file}: {' '.join(why.split())[:300]}, knobs unchanged", level="warning")
        return self._knobs

    def knobs_applied(self, version: int, cycle: int, step: int) -> None:
        if version and version not in self._applied:
            self._applied.add(version)
            self.event(f"knobs version {version} applied at cycle {cycle}, step {step}")

    # -- progress -------------------------------------------------------------------------------
    def progress(self, unit: str, step: int, total: int, fields: dict[str, Any]) -> None:
        if self.display is not None:
            self.display.progress(unit, step, total, fields)

    def should_stop(self) -> bool:
        return False

    # -- durability (used by the local runner for resume) ------------------------------------------
    def flush(self) -> int:
        """Flush to disk; returns the byte size of metrics.jsonl (the resume point)."""
        for f in (self._metrics, self._events):
            f.flush()
            os.fsync(f.fileno())
        return self._metrics.tell()

    def close(self) -> None:
        self._metrics.close()
        self._events.close()


def truncate_metrics(out_dir: Path, offset: int) -> None:
    """Drop metric lines written after the last completed unit (they will be written again)."""
    path = Path(out_dir) / "metrics.jsonl"
    if path.exists() and path.stat().st_size > offset:
        with open(path, "r+b") as f:
            f.truncate(offset)

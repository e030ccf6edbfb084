"""The local runner behind `copd train`: every unit of a run in sequence, in one process, resumable.

DIR/state.json records the completed units and the size of metrics.jsonl after the last one, so
`--resume` skips what is done, drops metric lines of a unit that was cut off, and runs it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from contract.settings import get_settings
from integrations.local import LocalIntegrations
from integrations.runs import trackers_of
from trainer import provenance
from trainer.reporter import JsonlReporter, truncate_metrics
from contract.plan import Unit, plan
from contract.retention import Held, RetentionPlan, needed_by_units, plan_retention
from trainer.ckptfiles import MANIFEST, drop_optimizer, has_optimizer
from trainer.checkpoint import read_state
from contract.spec import RunSpec, knobs_from_spec
from trainer.units import RunContext, run_unit

STATE = "state.json"


class RunDirError(ValueError):
    """The output folder cannot be used as asked (one-line message)."""


@dataclass
class RunState:
    """Progress of a local run, persisted atomically after every unit."""

    spec_hash: str
    completed: list[str] = field(default_factory=list)
    metrics_offset: int = 0

    def save(self, out: Path) -> None:
        tmp = out / f".{STATE}.tmp"
        tmp.write_text(json.dumps(self.__dict__, indent=1))
        os.replace(tmp, out / STATE)

    @classmethod
    def load(cls, out: Path) -> "RunState":
        return cls(**json.loads((out / STATE).read_text()))


def spec_hash(spec: RunSpec) -> str:
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]


def prepare_out_dir(spec: RunSpec, out: Path, resume: bool) -> RunState:
    """Check the folder against --resume; returns the state to continue from."""
    out = Path(out)
    has_state = (out / STATE).exists()
    if resume and has_state:
        state = RunState.load(out)
        if state.spec_hash != spec_hash(spec):
            raise RunDirError(f"{out}: holds a run of a different spec; resume with the same spec or use another --out")
        truncate_metrics(out, state.metrics_offset)
        return state
    if has_state or (out / "metrics.jsonl").exists():
        raise RunDirError(f"{out}: already holds a run; pass --resume to continue it, or choose another --out")
    return RunState(spec_hash(spec))


def train_local(spec: RunSpec, out: Path, model_cache: Path, *, resume: bool = False, display=None,
                log_fn: Callable[[str], None] = print, max_units: int | None = None) -> RunState:
    """Run (or continue) a whole run in this process; `max_units` stops early (tests use it to interrupt)."""
    out = Path(out)
    units = plan(spec)  # raises NotImplementedError for strategies not yet available, before any file is written
    trackers_of(spec, get_settings())  # a bad COPD_REPORT_TO: SpecError, before any file is written
    state = prepare_out_dir(spec, out, resume)
    ctx = RunContext.create(spec, out, model_cache, log_fn)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(spec.model_dump_json(indent=1))
    provenance.write(out, spec.base_model, ctx.layout.base)  # versions, commit, base model hash
    sink = LocalIntegrations.open(spec, out)
    reporter = JsonlReporter(out, knobs_from_spec(spec), display, sink=sink)
    if sink is not None:
        sink.report = lambda level, message: reporter.event(message, level=level)
    if display is not None:
        display.start(spec, units, state.completed)
    done = set(state.completed)
    ran = 0
    status = "failed"
    try:
        for unit in units:
            if unit.id in done:
                continue
            if max_units is not None and ran >= max_units:
                break
            run_unit(ctx, unit, reporter)
            state.metrics_offset = reporter.flush()
            state.completed.append(unit.id)
            state.save(out)
            ran += 1
            if display is not None:
                display.unit_done(unit)
            if unit.kind == "eval" and unit.cycle > 0:
                _drop_phase_one_checkpoints(ctx, unit)
            apply_retention(ctx, state.completed)
        status = "completed" if len(state.completed) == len(units) else "running"
    finally:
        if sink is not None:
            sink.close(status)
        reporter.close()
        if display is not None:
            display.stop()
    return state


def apply_retention(ctx: RunContext, completed: list[str]) -> RetentionPlan:
    """The spec's `checkpoints:` policy over the run folder (contract.retention): never what a unit not done
    reads, never `final/`."""
    held = []
    root = ctx.layout.root / "checkpoints"
    for folder in sorted(root.glob("*/c*-*")) if root.is_dir() else []:
        m = re.fullmatch(r"c(\d+)-[a-z]+", folder.name)
        if m and (folder / MANIFEST).is_file():
            step = int(read_state(folder).get("step", 0)) if (folder / "trainer_state.json").is_file() else 0
            held.append(Held(folder, folder.parent.name, folder.name, int(m.group(1)), step,
                             optimizer=has_optimizer(folder)))
    needed, with_optimizer = needed_by_units(ctx.spec, completed)
    plan = plan_retention(ctx.spec.checkpoints, held, needed=needed, with_optimizer=with_optimizer)
    for h in plan.delete:
        shutil.rmtree(h.key, ignore_errors=True)
    for h in plan.drop_optimizer:
        drop_optimizer(h.key)
    return plan


def _drop_phase_one_checkpoints(ctx: RunContext, unit: Unit) -> None:
    """Phase I checkpoints are intermediates: once the cycle is evaluated only end-of-cycle ones stay."""
    import shutil

    for e in ctx.spec.expert_names:
        shutil.rmtree(ctx.layout.checkpoint(e, unit.cycle, "rl"), ignore_errors=True)

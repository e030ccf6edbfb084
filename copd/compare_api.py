"""`copd compare --api URL`: a suite's runs submitted to the API (so they appear in the dashboard), then read back.

Each run's folder OUT/runs/<entry>/s<seed>/ gets `api_run.json` (the run's id and the API's address) when the
run is created, so a cut-off comparison waits for the same runs instead of submitting them again; once a run
completes, its spec and metric points are written there as `spec.json` and `metrics.jsonl`, the files the
report is computed from — the same report as for local runs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from contract.client import Client
from contract.spec import RunSpec
from contract.vocab import COMPLETED, WATCH_STOP

RUN_FILE = "api_run.json"
MAX_POINTS = 100_000


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def submit(api: Client, spec: RunSpec, folder: Path) -> int:
    """The run of `folder`: the one submitted before (api_run.json), else a new one, started."""
    record = folder / RUN_FILE
    if record.exists():
        data = json.loads(record.read_text())
        if data.get("api") == api.base_url:
            return int(data["id"])
    run = api.create_run(spec.model_dump(mode="json"))
    _write(record, json.dumps({"id": run.id, "api": api.base_url, "name": spec.name}))
    api.start(run.id)
    return run.id


def export(api: Client, run_id: int, spec: RunSpec, folder: Path) -> None:
    """A completed run's spec and every metric point as `spec.json` and `metrics.jsonl` (for the report)."""
    lines = []
    for series in api.get_metrics(run_id, max_points=MAX_POINTS).series:
        for p in series.points:
            lines.append(json.dumps({"expert": series.expert, "cycle": p.cycle, "step": p.step,
                                     "key": series.key, "value": p.value}))
    _write(folder / "spec.json", spec.model_dump_json(indent=1))
    _write(folder / "metrics.jsonl", "\n".join(lines) + "\n")
    run = api.get_run(run_id)
    if run.started_at and run.finished_at:
        _write(folder / "wall_s.txt", f"{(run.finished_at - run.started_at).total_seconds():.1f}\n")


def api_runner(api: Client, *, poll_s: float = 2.0, timeout_s: float | None = None) -> Callable:
    """A `run_suite` runner: submit a pass's runs, wait until each stops, export the completed ones."""

    def run(order, log) -> None:
        pending: dict[int, tuple[str, int, Path, RunSpec]] = {}
        for name, seed, folder, spec in order:
            if (folder / "metrics.jsonl").exists() and (folder / RUN_FILE).exists():
                log(f"{name} seed {seed}: done before")
                continue
            run_id = submit(api, spec, folder)
            log(f"{name} seed {seed}: run {run_id} at {api.base_url}")
            pending[run_id] = (name, seed, folder, spec)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while pending:
            for run_id in list(pending):
                status = api.get_run(run_id).status
                if status not in WATCH_STOP:
                    continue
                name, seed, folder, spec = pending.pop(run_id)
                if status == COMPLETED:
                    export(api, run_id, spec, folder)
                    log(f"{name} seed {seed}: run {run_id} completed")
                else:
                    log(f"{name} seed {seed}: run {run_id} {status}, left out of the report")
            if pending and deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"runs {', '.join(map(str, pending))} still going after {timeout_s:.0f} s")
            if pending:
                time.sleep(poll_s)

    return run

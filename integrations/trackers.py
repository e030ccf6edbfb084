"""One tracker run per copd run: W&B, MLflow and TensorBoard writers behind one small interface.

Series are named `<expert>/<key>` (`text/loss/grpo`, `merged/acc_mean`; run-level ones `run/<key>`), each point
at its own step. The spec is the tracker run's config; events are W&B text rows, MLflow tags and TensorBoard text
summaries; knob changes are W&B config entries and tags, MLflow tags and TensorBoard text. Each library is imported only when its tracker is opened.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence


@dataclass(frozen=True)
class Point:
    """One metric point as the exporter hands it to a tracker."""

    expert: str | None
    key: str
    step: int
    value: float
    wall_time: float
    cycle: int | None = None

    @property
    def series(self) -> str:
        """The tracker's name of the series: `<expert>/<key>`, or `run/<key>` for a run-level one."""
        return f"{self.expert or 'run'}/{self.key}"


@dataclass(frozen=True)
class RunInfo:
    """What a tracker is told about the copd run it mirrors."""

    key: str                 # stable id of the copd run on this deployment: `run-12`, or `local-<hash>`
    name: str                # the spec's name
    config: dict[str, Any]   # the spec, as JSON
    link: str                # the dashboard's page of the run, or the local run folder


class Tracker(Protocol):
    """A tracker run; every call may raise (the exporter buffers and retries)."""

    name: str

    def open(self, run: RunInfo) -> None: ...
    def log(self, points: Sequence[Point]) -> None: ...
    def event(self, message: str, wall_time: float, step: int = 0) -> None: ...
    def knobs(self, version: int, changes: dict[str, Any], wall_time: float) -> None: ...
    def finish(self, status: str) -> None: ...


@dataclass(frozen=True)
class TrackerConfig:
    """Where each tracker writes (from the settings; the local runner points the defaults into its folder)."""

    wandb_project: str = "copd"
    wandb_entity: str | None = None
    wandb_dir: Path | None = None
    mlflow_tracking_uri: str = "sqlite:///mlflow.db"
    mlflow_experiment: str = "copd"
    mlflow_artifacts: str | None = None   # the experiment's artifact location when copd creates it (a URI)
    tensorboard_dir: Path = Path("tensorboard")


class WandbTracker:
    """A W&B run (WANDB_MODE=offline writes it under wandb_dir for `wandb sync`)."""

    name = "wandb"

    def __init__(self, cfg: TrackerConfig):
        self.cfg = cfg
        self.run = None
        self._experts: set[str] = set()

    def open(self, run: RunInfo) -> None:
        import wandb

        if self.cfg.wandb_dir is not None:
            Path(self.cfg.wandb_dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=self.cfg.wandb_project, entity=self.cfg.wandb_entity, id=run.key, name=run.name,
                              config=run.config, notes=f"copd run: {run.link}", resume="allow", reinit="create_new",
                              dir=str(self.cfg.wandb_dir) if self.cfg.wandb_dir else None,
                              settings=wandb.Settings(silent=True, console="off"))

    def log(self, points: Sequence[Point]) -> None:
        # One W&B row per (expert, step): every expert's series has its own step axis `<expert>/step`,
        # so experts that report out of order never collide on W&B's one monotonic step.
        rows: dict[tuple[str, int], dict[str, Any]] = {}
        for p in points:
            owner = p.expert or "run"
            if owner not in self._experts:
                self.run.define_metric(f"{owner}/step", hidden=True)
                self.run.define_metric(f"{owner}/*", step_metric=f"{owner}/step")
                self._experts.add(owner)
            rows.setdefault((owner, p.step), {f"{owner}/step": p.step})[p.series] = p.value
        for row in rows.values():
            self.run.log(row)

    def event(self, message: str, wall_time: float, step: int = 0) -> None:
        self.run.log({"event": message})  # a text row of the history (shown in the run's table), not a chart
        self.run.summary["last_event"] = message

    def _notes(self, line: str) -> None:
        self.run.notes = ((self.run.notes or "") + "\n" + line)[-20000:]

    def knobs(self, version: int, changes: dict[str, Any], wall_time: float) -> None:
        self.run.config.update({f"knobs/v{version}": changes}, allow_val_change=True)
        self.run.tags = tuple(sorted(set(self.run.tags or ()) | {f"knobs-v{version}"}))
        self._notes(f"knobs v{version}: {json.dumps(changes, sort_keys=True)}")

    def finish(self, status: str) -> None:
        if self.run is not None:
            self.run.summary["copd/status"] = status
            self.run.finish(exit_code=0 if status == "completed" else 1)
            self.run = None


class MlflowTracker:
    """An MLflow run through MlflowClient (a local file or SQLite store, or a tracking server)."""

    name = "mlflow"

    def __init__(self, cfg: TrackerConfig):
        self.cfg = cfg
        self.client = None
        self.run_id: str | None = None
        self._events = 0

    def open(self, run: RunInfo) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.cfg.mlflow_tracking_uri)
        exp = self.client.get_experiment_by_name(self.cfg.mlflow_experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(
            self.cfg.mlflow_experiment, artifact_location=self.cfg.mlflow_artifacts)
        found = self.client.search_runs([exp_id], filter_string=f"tags.`copd.run` = '{run.key}'", max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            self._events = int(found[0].data.tags.get("copd.events", "0"))
            if found[0].info.status != "RUNNING":  # the run goes on (a resume, an API restart)
                self.client.update_run(self.run_id, status="RUNNING")
            return
        r = self.client.create_run(exp_id, run_name=run.name, tags={"copd.run": run.key, "copd.link": run.link,
                                                                    "mlflow.note.content": f"copd run: {run.link}"})
        self.run_id = r.info.run_id
        from mlflow.entities import Param

        params = [Param(k, json.dumps(v)[:6000]) for k, v in sorted(run.config.items())]
        self.client.log_batch(self.run_id, params=params)
        self.client.log_dict(self.run_id, run.config, "spec.json")

    def log(self, points: Sequence[Point]) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(p.series, p.value, int(p.wall_time * 1000), p.step) for p in points]
        for i in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def event(self, message: str, wall_time: float, step: int = 0) -> None:
        self._events += 1
        self.client.set_tag(self.run_id, f"event/{self._events:05d}", message[:5000])
        self.client.set_tag(self.run_id, "copd.events", str(self._events))

    def knobs(self, version: int, changes: dict[str, Any], wall_time: float) -> None:
        self.client.set_tag(self.run_id, f"knobs/v{version}", json.dumps(changes, sort_keys=True))

    def finish(self, status: str) -> None:
        if self.client is not None and self.run_id is not None:
            mlflow_status = {"completed": "FINISHED", "cancelled": "KILLED", "running": "KILLED"}.get(status, "FAILED")
            self.client.set_tag(self.run_id, "copd.status", status)
            self.client.set_terminated(self.run_id, mlflow_status)


class TensorboardTracker:
    """TensorBoard event files (tensorboard's own writer: no torch, no TensorFlow), one folder a run."""

    name = "tensorboard"

    def __init__(self, cfg: TrackerConfig):
        self.cfg = cfg
        self.writer = None

    def open(self, run: RunInfo) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        folder = Path(self.cfg.tensorboard_dir) / run.key
        folder.mkdir(parents=True, exist_ok=True)
        fresh = not any(folder.iterdir())
        self.writer = EventFileWriter(str(folder))
        if fresh:
            self._text("config", "```json\n" + json.dumps(run.config, indent=1) + "\n```", time.time(), 0)
            self._text("link", run.link, time.time(), 0)

    def _write(self, summary, wall_time: float, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self.writer.add_event(Event(wall_time=wall_time, step=step, summary=summary))

    def _text(self, tag: str, text: str, wall_time: float, step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.text.summary_v2 import text_pb

        self._write(Summary(value=list(text_pb(tag, text).value)), wall_time, step)

    def log(self, points: Sequence[Point]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.scalar.summary_v2 import scalar_pb

        for p in points:
            self._write(Summary(value=list(scalar_pb(p.series, p.value).value)), p.wall_time, p.step)
        self.writer.flush()

    def event(self, message: str, wall_time: float, step: int = 0) -> None:
        self._text("events", message, wall_time, step)
        self.writer.flush()

    def knobs(self, version: int, changes: dict[str, Any], wall_time: float) -> None:
        self._text("knobs", f"v{version}: {json.dumps(changes, sort_keys=True)}", wall_time, version)
        self.writer.flush()

    def finish(self, status: str) -> None:
        if self.writer is not None:
            self._text("events", f"run {status}", time.time(), 0)
            self.writer.close()
            self.writer = None


TRACKER_TYPES = {"wandb": WandbTracker, "mlflow": MlflowTracker, "tensorboard": TensorboardTracker}


def make_tracker(name: str, cfg: TrackerConfig) -> Tracker:
    """A tracker by its name in `report_to`."""
    return TRACKER_TYPES[name](cfg)

"""The integrations of one run, from its spec and the deployment's settings: the same for the API and `copd train`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from contract.settings import Settings
from contract.spec import TRACKERS, RunSpec, SpecError
from integrations.alerts import RunAlerts, merged_alerts
from integrations.exporter import RunExporter
from integrations.trackers import RunInfo, TrackerConfig, make_tracker


def trackers_of(spec: RunSpec, settings: Settings) -> list[str]:
    """The spec's `report_to` plus COPD_REPORT_TO, in TRACKERS order; SpecError for an unknown name."""
    env = [t.strip() for t in (settings.report_to or "").split(",") if t.strip()]
    bad = [t for t in env if t not in TRACKERS]
    if bad:
        raise SpecError(f"COPD_REPORT_TO: unknown tracker {bad[0]!r} (one of {', '.join(TRACKERS)})")
    wanted = set(spec.report_to) | set(env)
    return [t for t in TRACKERS if t in wanted]


def tracker_config(settings: Settings, root: Path) -> TrackerConfig:
    """Where the trackers write: the settings', else under `root` (the data dir, or `copd train`'s folder)."""
    return TrackerConfig(wandb_project=settings.wandb_project, wandb_entity=settings.wandb_entity, wandb_dir=root,
                         mlflow_tracking_uri=settings.mlflow_tracking_uri or f"sqlite:///{root / 'mlflow.db'}",
                         mlflow_experiment=settings.mlflow_experiment,
                         # the default SQLite store keeps spec.json beside it, not in ./mlruns of the cwd
                         mlflow_artifacts=None if settings.mlflow_tracking_uri else (root / "mlflow-artifacts").as_uri(),
                         tensorboard_dir=settings.tensorboard_dir or root / "tensorboard")


@dataclass
class RunIntegrations:
    """A run's exporter (None without trackers) and alerts (None without webhooks)."""

    exporter: RunExporter | None
    alerts: RunAlerts | None


def open_run_integrations(spec: RunSpec, settings: Settings, *, key: str, link: str, root: Path, state: Path,
                          report: Callable[[str, str], None]) -> RunIntegrations:
    """The run's exporter (started) and alerts; `state` holds the exporter's outbox and cursors."""
    names = trackers_of(spec, settings)
    exporter = None
    if names:
        cfg = tracker_config(settings, root)
        info = RunInfo(key=key, name=spec.name, config=spec.model_dump(mode="json"), link=link)
        exporter = RunExporter(info, [make_tracker(n, cfg) for n in names], state, report).start()
    alerts = merged_alerts(spec.alerts, settings.alert_webhooks, settings.alert_on, settings.alert_rules)
    return RunIntegrations(exporter, RunAlerts(f"copd run {spec.name} ({key})", link, alerts) if alerts.webhooks else None)

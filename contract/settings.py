"""Settings from the environment (COPD_*), shared by the API, workers, CLI and dashboard."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


# The working directory when this process started: one of the default data roots (a later chdir does not
# widen what a spec may read).
START_CWD = Path.cwd()


class Settings(BaseSettings):
    """Every part reads the same COPD_* variables; unset ones fall back to the embedded default."""

    model_config = SettingsConfigDict(env_prefix="COPD_", extra="ignore")

    data_dir: Path = Field(Path.home() / ".copd", description="Embedded default's folder: SQLite file, checkpoints, token, model cache.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<data_dir>/copd.db.")
    broker_url: str | None = Field(None, description="Celery broker; default an embedded filesystem broker in data_dir.")
    api_token: str | None = Field(None, description="Admin bearer token; default generated into <data_dir>/token.")
    api_url: str = Field("http://127.0.0.1:8000", description="Where workers, CLI and dashboard reach the API.")
    heartbeat_timeout_s: float = Field(300.0, gt=0, description="A running run with no heartbeat for this long is marked crashed.")
    reaper_interval_s: float = Field(30.0, ge=0, description="Seconds between the API's checks for silent runs; 0 turns the check off.")
    data_roots: str | None = Field(None, description="Folders (os.pathsep-separated) that a spec's dataset, jsonl and reward-plugin "
                                                     "files must lie under, checked by the API and the workers; default the data "
                                                     "dir and the working directory at process start.")
    stall_timeout_s: float = Field(600.0, ge=0, description="A running run with no unit in flight and nothing in "
                                   "the broker's queues for this long lost a message (a broker restart): its next "
                                   "phase is re-sent once, then the run is crashed; 0 turns the watchdog off.")

    # ---- integrations: trackers and alerts for every run of this deployment (docs/integrations.md)
    report_to: str | None = Field(None, description="Trackers for every run, comma-separated: wandb, mlflow, tensorboard.")
    dashboard_url: str = Field("http://127.0.0.1:8501", description="The dashboard's address, linked from trackers and alerts.")
    wandb_project: str = Field("copd", description="W&B project of the runs (WANDB_MODE, WANDB_API_KEY: wandb's own).")
    wandb_entity: str | None = Field(None, description="W&B entity (team); default the API key's user.")
    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///<data_dir>/mlflow.db "
                                            "(<out>/mlflow.db for `copd train`).")
    mlflow_experiment: str = Field("copd", description="MLflow experiment of the runs.")
    tensorboard_dir: Path | None = Field(None, description="Where TensorBoard event files go (one folder a run); default "
                                         "<data_dir>/tensorboard (<out>/tensorboard for `copd train`).")
    alert_webhooks: str | None = Field(None, description="Webhook URLs for every run, comma-separated (Slack-compatible).")
    alert_on: str = Field("crashed,failed", description="Run statuses that alert for every run (comma-separated).")
    alert_rules: str | None = Field(None, description="Metric rules for every run, ';'-separated, e.g. "
                                    "'acc_mean < 0.3 after cycle 2; rollout/logp_gap > 0.5'.")
    export_interval_s: float = Field(2.0, ge=0, description="Seconds between the API's passes over new events, "
                                     "statuses and knob changes (trackers and alerts); 0 turns the passes off.")
    checkpoint_url: str | None = Field(None, description="Checkpoint store: any fsspec URL (s3://bucket/prefix, "
                                       "gs://..., file:///shared/folder). Units upload their checkpoints there and "
                                       "download what they need, and the run's markers live in the API's database, "
                                       "so worker hosts need no shared disk; default: checkpoints stay in data_dir.")
    store_timeout_s: float = Field(60.0, gt=0, description="Seconds a checkpoint-store request may take (connect, "
                                   "read) before the unit fails with an error naming the store.")

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'copd.db'}"

    @property
    def model_cache(self) -> Path:
        return self.data_dir / "models"

    @property
    def checkpoint_cache(self) -> Path:
        """Checkpoints downloaded from the store, one folder per manifest sha256 (safe to delete)."""
        return self.data_dir / "cache" / "checkpoints"

    @property
    def token_file(self) -> Path:
        return self.data_dir / "token"

    @property
    def allowed_data_roots(self) -> list[Path]:
        """The resolved folders a spec's data files must lie under (COPD_DATA_ROOTS, else data dir + start cwd)."""
        if self.data_roots:
            raw = [Path(p).expanduser() for p in self.data_roots.split(os.pathsep) if p.strip()]
        else:
            raw = [self.data_dir, START_CWD]
        return [p.resolve() for p in raw]


@lru_cache
def get_settings() -> Settings:
    """Settings read once per process (tests clear the cache with get_settings.cache_clear())."""
    return Settings()

"""Settings from the environment (COPD_*), shared by the API, workers, CLI and dashboard."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    stall_timeout_s: float = Field(600.0, ge=0, description="A running run with no unit in flight and nothing in "
                                   "the broker's queues for this long lost a message (a broker restart): its next "
                                   "phase is re-sent once, then the run is crashed; 0 turns the watchdog off.")

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'copd.db'}"

    @property
    def model_cache(self) -> Path:
        return self.data_dir / "models"

    @property
    def token_file(self) -> Path:
        return self.data_dir / "token"


@lru_cache
def get_settings() -> Settings:
    """Settings read once per process (tests clear the cache with get_settings.cache_clear())."""
    return Settings()

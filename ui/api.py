"""The dashboard's view of the REST API: a thin adapter over the one client (contract.client).

The dashboard never touches the database; everything it shows comes through here. Calls go through
`contract.client.Client`; this module only turns its typed bodies into what pages draw — JSON-like dicts
for tables, tidy pandas frames for charts — and keeps the client's `ApiError` (with its one-line `message`
and `field_errors`) as the one error type pages show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import pandas as pd

from contract.client import ApiError, Client, read_token  # noqa: F401  (pages import them from here)
from contract.schemas import KnobsPublic, SeriesList, Vocab
from contract.settings import Settings
from contract.vocab import ACTIONS

SERIES_COLUMNS = ["expert", "key", "step", "value"]


@dataclass(frozen=True)
class Applied:
    """Where a worker first used a knob version."""

    cycle: int
    step: int
    at: str


@dataclass(frozen=True)
class KnobVersion:
    """One saved change of the knobs; `applied` None means pending (no worker has used it yet)."""

    version: int
    changes: dict[str, Any]
    author: str
    created_at: str
    applied: Applied | None


@dataclass(frozen=True)
class Knobs:
    """The knobs as the editor shows them: the typed KnobsPublic with its values as a plain mapping."""

    version: int
    values: dict[str, Any]
    history: list[KnobVersion] = field(default_factory=list)

    @property
    def pending(self) -> list[KnobVersion]:
        """Saved changes no worker has applied yet (version 0, the spec itself, is never pending)."""
        return [h for h in self.history if h.version > 0 and h.applied is None]

    @classmethod
    def from_public(cls, body: KnobsPublic) -> Knobs:
        return cls.from_json(body.model_dump(mode="json"))

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Knobs:
        history = [KnobVersion(version=h["version"], changes=h.get("changes") or {}, author=h.get("author") or "",
                               created_at=h.get("created_at") or "",
                               applied=Applied(**h["applied"]) if h.get("applied") else None)
                   for h in body.get("history", [])]
        return cls(version=body["version"], values=body.get("values") or {}, history=history)


def series_frame(body: SeriesList, *, cycle: bool = False) -> pd.DataFrame:
    """Tidy frame (expert, key, step, value[, cycle]) of a metrics body."""
    if cycle:
        rows = [(s.expert, s.key, p.step, p.value, p.cycle) for s in body.series for p in s.points]
        return pd.DataFrame(rows, columns=[*SERIES_COLUMNS, "cycle"])
    rows = [(s.expert, s.key, p.step, p.value) for s in body.series for p in s.points]
    return pd.DataFrame(rows, columns=SERIES_COLUMNS)


class Api:
    """The dashboard's calls; every failure (HTTP error status, unreachable server) is an ApiError."""

    def __init__(self, base_url: str, token: str | None, *, timeout: float = 15.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.client = Client(base_url, token, timeout=timeout, transport=transport)
        self.base_url = self.client.base_url
        self.has_token = self.client.has_token

    @classmethod
    def from_env(cls) -> Api:
        """URL from COPD_API_URL; token from COPD_API_TOKEN or <COPD_DATA_DIR>/token."""
        settings = Settings()
        return cls(settings.api_url, read_token(settings))

    def close(self) -> None:
        self.client.close()

    # ---- runs

    def health(self) -> dict[str, Any]:
        return self.client.healthz()

    def vocab(self) -> Vocab:
        return self.client.vocab()

    def runs(self, *, status: list[str] | None = None, limit: int = 50, offset: int = 0) -> tuple[list[dict], int]:
        """Runs, newest first, and the total that match."""
        body = self.client.list_runs(status=status, limit=limit, offset=offset)
        return [r.model_dump(mode="json") for r in body.items], body.total

    def run(self, run_id: int) -> dict[str, Any]:
        return self.client.get_run(run_id).model_dump(mode="json")

    def create_run(self, spec: dict[str, Any]) -> dict[str, Any]:
        """A new draft run from a spec (422 names the bad field)."""
        return self.client.create_run(spec).model_dump(mode="json")

    def act(self, run_id: int, action: str) -> dict[str, Any]:
        """Lifecycle action: start, pause, resume or cancel; returns the run."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        return self.client.action(run_id, action).model_dump(mode="json")

    def fork(self, run_id: int, checkpoint_id: int, *, name: str | None = None,
             overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.client.fork(run_id, checkpoint_id, name=name or None, overrides=overrides).model_dump(mode="json")

    # ---- knobs

    def knobs(self, run_id: int) -> Knobs:
        return Knobs.from_public(self.client.get_knobs(run_id))

    def change_knobs(self, run_id: int, *, expected_version: int, changes: dict[str, Any]) -> Knobs:
        """PATCH with optimistic versioning: 409 when `expected_version` is stale."""
        return Knobs.from_public(self.client.patch_knobs(run_id, expected_version, changes))

    # ---- metrics, checkpoints, events

    def metrics(self, run_id: int, *, key: str | None = None, expert: str | None = None,
                max_points: int = 1000, cycle: bool = False) -> pd.DataFrame:
        """Tidy frame (expert, key, step, value), plus the points' `cycle` column when asked; the API
        min/max-downsamples each series to `max_points`."""
        return series_frame(self.client.get_metrics(run_id, key=key, expert=expert, max_points=max_points),
                            cycle=cycle)

    def checkpoints(self, run_id: int, *, limit: int = 500) -> tuple[list[dict], int]:
        body = self.client.list_checkpoints(run_id, limit=limit)
        return [c.model_dump(mode="json") for c in body.items], body.total

    def samples(self, run_id: int, *, cycle: int | None = None) -> dict[str, Any]:
        """One cycle's sample prompts (default: the latest with any): {cycle, cycles, samples: [{domain, index,
        prompt, reference, images (base64 PNG), answers: [{model, answer, score, correct}]}]}."""
        return self.client.get_samples(run_id, cycle=cycle).model_dump(mode="json")

    def events(self, run_id: int, *, after_id: int = 0, limit: int = 500) -> tuple[list[dict], int]:
        """Events after `after_id`, oldest first, and how many match in all."""
        body = self.client.list_events(run_id, after_id=after_id, limit=limit)
        return [e.model_dump(mode="json") for e in body.items], body.total

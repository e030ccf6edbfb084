"""The dashboard's one HTTP client: typed calls to the copd REST API; every failure is an ApiError.

The dashboard never touches the database; everything it shows comes through here. Failures — an HTTP
error status or an unreachable server — become `ApiError(status, detail)` with a one-line, readable
message, so pages can show them instead of a traceback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import httpx
import pandas as pd

from copd.settings import Settings

SERIES_COLUMNS = ["expert", "key", "step", "value"]
_FIELD_IN_DETAIL = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\-]*): (.+)$")
_TITLES = {401: "Not authorized", 403: "Forbidden", 404: "Not found", 409: "Conflict", 413: "Too large",
           422: "Invalid", 503: "Unavailable"}


class ApiError(Exception):
    """A failed call: `status` is the HTTP status, or None when the API could not be reached."""

    def __init__(self, status: int | None, detail: str, errors: list[dict[str, Any]] | None = None,
                 hint: str = "") -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors or []
        self.hint = hint

    @property
    def message(self) -> str:
        """One readable line: what went wrong, the API's words, and what to do about it."""
        if self.status is None:
            head = self.detail
        else:
            title = _TITLES.get(self.status, "Server error" if self.status >= 500 else "Request refused")
            head = f"{title} ({self.status}): {self.detail}"
        return f"{head} — {self.hint}" if self.hint else head

    def field_errors(self) -> dict[str, str]:
        """Field (dotted path, e.g. `experts.0.domain`) → message, from `errors` or else from `detail`."""
        out = {e["field"]: e["message"] for e in self.errors if e.get("field")}
        if not out:
            for part in self.detail.split("; "):
                if m := _FIELD_IN_DETAIL.match(part):
                    out[m.group(1)] = m.group(2)
        return out

    def __str__(self) -> str:
        return self.message


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
    """The OPD-mixing knobs of a run: current version, merged values, and every version's change."""

    version: int
    values: dict[str, Any]
    history: list[KnobVersion] = field(default_factory=list)

    @property
    def pending(self) -> list[KnobVersion]:
        """Saved changes no worker has applied yet (version 0, the spec itself, is never pending)."""
        return [h for h in self.history if h.version > 0 and h.applied is None]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Knobs:
        history = [KnobVersion(version=h["version"], changes=h.get("changes") or {}, author=h.get("author") or "",
                               created_at=h.get("created_at") or "",
                               applied=Applied(**h["applied"]) if h.get("applied") else None)
                   for h in body.get("history", [])]
        return cls(version=body["version"], values=body.get("values") or {}, history=history)


def read_token(settings: Settings) -> str | None:
    """COPD_API_TOKEN, else the embedded default's token file (<COPD_DATA_DIR>/token), else None."""
    if settings.api_token:
        return settings.api_token
    try:
        return settings.token_file.read_text().strip() or None
    except OSError:
        return None


class Api:
    """Typed methods over `/api/v1`; raises ApiError for any HTTP error or connection failure."""

    def __init__(self, base_url: str, token: str | None, *, timeout: float = 15.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.has_token = bool(token)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=f"{self.base_url}/api/v1", headers=headers, timeout=timeout,
                                  transport=transport)

    @classmethod
    def from_env(cls) -> Api:
        """URL from COPD_API_URL; token from COPD_API_TOKEN or <COPD_DATA_DIR>/token."""
        settings = Settings()
        return cls(settings.api_url, read_token(settings))

    def close(self) -> None:
        self._http.close()

    # ---- transport

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TimeoutException:
            raise ApiError(None, f"API at {self.base_url} did not answer in time ({method} {path})",
                           hint="it may be overloaded; retry") from None
        except httpx.HTTPError as err:  # connection refused, DNS, reset, bad URL …
            reason = str(err).strip() or type(err).__name__
            raise ApiError(None, f"API not reachable at {self.base_url} ({reason})",
                           hint="start it with `copd api` (or `copd up`), or set COPD_API_URL") from None
        if r.status_code >= 400:
            raise self._error(r)
        return r.json() if r.content else None

    def _error(self, r: httpx.Response) -> ApiError:
        try:
            body = r.json()
            detail, errors = str(body.get("detail") or r.reason_phrase), body.get("errors") or []
        except ValueError:
            detail, errors = (r.text.strip()[:200] or r.reason_phrase), []
        hint = {401: "set COPD_API_TOKEN to a valid token (or put it in <COPD_DATA_DIR>/token)",
                403: "this token's role may not do that; use a write token"}.get(r.status_code, "")
        if not self.has_token and r.status_code == 401:
            hint = "no token found: set COPD_API_TOKEN or COPD_DATA_DIR (whose `token` file the API wrote)"
        return ApiError(r.status_code, detail, errors, hint)

    # ---- runs

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/healthz")

    def runs(self, *, status: list[str] | None = None, limit: int = 50, offset: int = 0) -> tuple[list[dict], int]:
        """Runs, newest first, and the total that match."""
        body = self._call("GET", "/runs", params={"status": status or [], "limit": limit, "offset": offset})
        return body["items"], body["total"]

    def run(self, run_id: int) -> dict[str, Any]:
        return self._call("GET", f"/runs/{run_id}")

    def create_run(self, spec: dict[str, Any]) -> dict[str, Any]:
        """A new draft run from a spec (422 names the bad field)."""
        return self._call("POST", "/runs", json=spec)

    def act(self, run_id: int, action: str) -> dict[str, Any]:
        """Lifecycle action: start, pause, resume or cancel; returns the run."""
        if action not in {"start", "pause", "resume", "cancel"}:
            raise ValueError(f"unknown action {action!r}")
        return self._call("POST", f"/runs/{run_id}/{action}")

    def fork(self, run_id: int, checkpoint_id: int, *, name: str | None = None,
             overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"checkpoint_id": checkpoint_id}
        if name:
            body["name"] = name
        if overrides:
            body["overrides"] = overrides
        return self._call("POST", f"/runs/{run_id}/fork", json=body)

    # ---- knobs

    def knobs(self, run_id: int) -> Knobs:
        return Knobs.from_json(self._call("GET", f"/runs/{run_id}/knobs"))

    def change_knobs(self, run_id: int, *, expected_version: int, changes: dict[str, Any]) -> Knobs:
        """PATCH with optimistic versioning: 409 when `expected_version` is stale."""
        body = {"expected_version": expected_version, "changes": changes}
        return Knobs.from_json(self._call("PATCH", f"/runs/{run_id}/knobs", json=body))

    # ---- metrics, checkpoints, events

    def metrics(self, run_id: int, *, key: str | None = None, expert: str | None = None,
                max_points: int = 1000) -> pd.DataFrame:
        """Tidy frame (expert, key, step, value); the API min/max-downsamples each series to `max_points`."""
        params: dict[str, Any] = {"max_points": max_points}
        if key is not None:
            params["key"] = key
        if expert is not None:
            params["expert"] = expert
        body = self._call("GET", f"/runs/{run_id}/metrics", params=params)
        rows = [(s["expert"], s["key"], p["step"], p["value"]) for s in body["series"] for p in s["points"]]
        return pd.DataFrame(rows, columns=SERIES_COLUMNS)

    def checkpoints(self, run_id: int, *, limit: int = 500) -> tuple[list[dict], int]:
        body = self._call("GET", f"/runs/{run_id}/checkpoints", params={"limit": limit})
        return body["items"], body["total"]

    def events(self, run_id: int, *, after_id: int = 0, limit: int = 500) -> tuple[list[dict], int]:
        """Events after `after_id`, oldest first, and how many match in all."""
        body = self._call("GET", f"/runs/{run_id}/events", params={"after_id": after_id, "limit": limit})
        return body["items"], body["total"]

"""The Python client of the copd REST API (httpx), used by the CLI, the workers and the dashboard.

Every method is one endpoint of docs/api.md and returns the server's own response model. A failure
raises `ApiError` with the HTTP status (0 when the API could not be reached) and the server's one-line
`detail`. Workers pass `retry_s` so that a restarting API (connection refused, 502/503/504) is waited
for instead of failing a unit; requests that are not idempotent are retried only when they never
reached the server.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Mapping

import httpx

from copd.settings import Settings, get_settings
from server.schemas import (
    CheckpointList,
    CheckpointPublic,
    EventList,
    EventPublic,
    HeartbeatPublic,
    KnobsPublic,
    RunList,
    RunPublic,
    SeriesList,
)

API_PREFIX = "/api/v1"
RETRY_STATUS = frozenset({502, 503, 504})
# Errors after which the request surely never reached the server: safe to resend anything.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class ApiError(Exception):
    """A failed API call: `status` (0 = unreachable) and the server's one-line `detail`."""

    def __init__(self, status: int, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"{status}: {detail}" if status else detail)
        self.status = status
        self.detail = detail
        self.errors = errors or []


def read_token(settings: Settings) -> str:
    """COPD_API_TOKEN, else the token file the API writes at first start; ApiError when neither exists."""
    if settings.api_token:
        return settings.api_token
    try:
        return settings.token_file.read_text().strip()
    except OSError:
        raise ApiError(0, f"no API token: set COPD_API_TOKEN, or start the API once so that it writes "
                          f"{settings.token_file}") from None


class Client:
    """Typed access to /api/v1. Use as a context manager, or call `close()`."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0, retry_s: float = 0.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry_s = retry_s
        self._args = (token, timeout, transport)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {token}"})

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **kwargs: Any) -> "Client":
        """A client for COPD_API_URL with COPD_API_TOKEN (or the token file in COPD_DATA_DIR)."""
        settings = settings or get_settings()
        return cls(settings.api_url, read_token(settings), **kwargs)

    def clone(self, **overrides: Any) -> "Client":
        """A new client to the same API with the same token (e.g. for another thread)."""
        token, timeout, transport = self._args
        kwargs = {"timeout": timeout, "retry_s": self.retry_s, "transport": transport, **overrides}
        return Client(self.base_url, token, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transport -------------------------------------------------------------------------------
    def _call(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
              idempotent: bool | None = None) -> Any:
        """One request with retries within `retry_s`; the decoded JSON body (None for 204)."""
        idempotent = method in ("GET", "PUT", "DELETE") if idempotent is None else idempotent
        url = path if path.startswith("/healthz") else API_PREFIX + path
        deadline = time.monotonic() + self.retry_s
        delay = 0.5
        while True:
            try:
                r = self._http.request(method, url, json=json, params=_clean(params))
            except httpx.TransportError as err:
                retry = isinstance(err, NOT_SENT) or idempotent
                if not retry or time.monotonic() + delay > deadline:
                    raise ApiError(0, f"cannot reach the API at {self.base_url} "
                                      f"({type(err).__name__}: {err})") from None
            else:
                if r.status_code < 400:
                    return None if r.status_code == 204 or not r.content else r.json()
                if r.status_code not in RETRY_STATUS or time.monotonic() + delay > deadline:
                    raise _error(r)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def healthz(self) -> dict[str, Any]:
        return self._call("GET", "/healthz")

    # ---- runs ------------------------------------------------------------------------------------
    def create_run(self, spec: Mapping[str, Any] | Any) -> RunPublic:
        """POST a run spec (a mapping or a trainer.spec.RunSpec): a new draft run."""
        body = spec.model_dump(mode="json") if hasattr(spec, "model_dump") else dict(spec)
        return RunPublic.model_validate(self._call("POST", "/runs", json=body))

    def list_runs(self, status: Iterable[str] | None = None, limit: int = 50, offset: int = 0) -> RunList:
        params = {"status": list(status) if status else None, "limit": limit, "offset": offset}
        return RunList.model_validate(self._call("GET", "/runs", params=params))

    def get_run(self, run_id: int) -> RunPublic:
        return RunPublic.model_validate(self._call("GET", f"/runs/{run_id}"))

    def delete_run(self, run_id: int) -> None:
        self._call("DELETE", f"/runs/{run_id}")

    def action(self, run_id: int, verb: str) -> RunPublic:
        """start | pause | resume | cancel (409 names the current state when the move is not allowed)."""
        return RunPublic.model_validate(self._call("POST", f"/runs/{run_id}/{verb}"))

    def start(self, run_id: int) -> RunPublic:
        return self.action(run_id, "start")

    def pause(self, run_id: int) -> RunPublic:
        return self.action(run_id, "pause")

    def resume(self, run_id: int) -> RunPublic:
        return self.action(run_id, "resume")

    def cancel(self, run_id: int) -> RunPublic:
        return self.action(run_id, "cancel")

    def fork(self, run_id: int, checkpoint_id: int, name: str | None = None,
             overrides: Mapping[str, Any] | None = None) -> RunPublic:
        body = {"checkpoint_id": checkpoint_id, "name": name, "overrides": dict(overrides or {})}
        return RunPublic.model_validate(self._call("POST", f"/runs/{run_id}/fork", json=_clean(body)))

    # ---- knobs -----------------------------------------------------------------------------------
    def get_knobs(self, run_id: int) -> KnobsPublic:
        return KnobsPublic.model_validate(self._call("GET", f"/runs/{run_id}/knobs"))

    def patch_knobs(self, run_id: int, expected_version: int, changes: Mapping[str, Any]) -> KnobsPublic:
        body = {"expected_version": expected_version, "changes": dict(changes)}
        return KnobsPublic.model_validate(self._call("PATCH", f"/runs/{run_id}/knobs", json=body, idempotent=False))

    def set_knobs(self, run_id: int, changes: Mapping[str, Any], attempts: int = 3) -> KnobsPublic:
        """Apply `changes` on top of whatever version is current (re-reads and retries a stale version)."""
        for i in range(attempts):
            version = self.get_knobs(run_id).version
            try:
                return self.patch_knobs(run_id, version, changes)
            except ApiError as err:
                if err.status != 409 or "stale" not in err.detail or i == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def knobs_applied(self, run_id: int, version: int, cycle: int, step: int) -> KnobsPublic:
        body = {"cycle": cycle, "step": step}
        return KnobsPublic.model_validate(self._call("POST", f"/runs/{run_id}/knobs/{version}/applied", json=body,
                                                     idempotent=True))

    # ---- metrics ---------------------------------------------------------------------------------
    def post_metrics(self, run_id: int, points: list[dict[str, Any]]) -> int:
        """Upsert points {expert, key, step, value, wall_time?}; (expert, key, step) is stored once."""
        out = self._call("POST", f"/runs/{run_id}/metrics", json={"points": points}, idempotent=True)
        return int(out["points"])

    def get_metrics(self, run_id: int, key: str | None = None, expert: str | None = None,
                    max_points: int = 2000) -> SeriesList:
        params = {"key": key, "expert": expert, "max_points": max_points}
        return SeriesList.model_validate(self._call("GET", f"/runs/{run_id}/metrics", params=params))

    # ---- checkpoints -----------------------------------------------------------------------------
    def register_checkpoint(self, run_id: int, *, expert: str, cycle: int, step: int, uri: str, sha256: str,
                            bytes: int, metrics: Mapping[str, float] | None = None,
                            final: bool = False) -> CheckpointPublic:
        """Register (or update: same expert, cycle, step) a checkpoint record."""
        body = {"expert": expert, "cycle": cycle, "step": step, "uri": uri, "sha256": sha256, "bytes": bytes,
                "metrics": dict(metrics or {}), "final": final}
        return CheckpointPublic.model_validate(self._call("POST", f"/runs/{run_id}/checkpoints", json=body,
                                                          idempotent=True))

    def list_checkpoints(self, run_id: int, expert: str | None = None, final: bool | None = None,
                         limit: int = 100, offset: int = 0) -> CheckpointList:
        params = {"expert": expert, "final": final, "limit": limit, "offset": offset}
        return CheckpointList.model_validate(self._call("GET", f"/runs/{run_id}/checkpoints", params=params))

    def get_checkpoint(self, run_id: int, checkpoint_id: int) -> CheckpointPublic:
        return CheckpointPublic.model_validate(self._call("GET", f"/runs/{run_id}/checkpoints/{checkpoint_id}"))

    def mark_final(self, run_id: int, checkpoint_id: int) -> CheckpointPublic:
        return CheckpointPublic.model_validate(
            self._call("POST", f"/runs/{run_id}/checkpoints/{checkpoint_id}/final", idempotent=True))

    # ---- events ----------------------------------------------------------------------------------
    def post_event(self, run_id: int, message: str, level: str = "info", expert: str | None = None) -> EventPublic:
        body = {"message": message, "level": level, "expert": expert}
        return EventPublic.model_validate(self._call("POST", f"/runs/{run_id}/events", json=body))

    def list_events(self, run_id: int, after_id: int = 0, level: str | None = None, limit: int = 100) -> EventList:
        params = {"after_id": after_id, "level": level, "limit": limit}
        return EventList.model_validate(self._call("GET", f"/runs/{run_id}/events", params=params))

    # ---- worker reports --------------------------------------------------------------------------
    def report_status(self, run_id: int, status: str, message: str | None = None) -> RunPublic:
        """running | completed | failed (409 when the run is not in a state that allows it)."""
        body = {"status": status, "message": message}
        return RunPublic.model_validate(self._call("POST", f"/runs/{run_id}/status", json=_clean(body)))

    def report_progress(self, run_id: int, *, cycle: int, phase: str, expert: str | None = None,
                        unit: str | None = None, expert_status: str | None = None,
                        progress: float | None = None) -> RunPublic:
        body = {"cycle": cycle, "phase": phase, "expert": expert, "unit": unit, "expert_status": expert_status,
                "progress": progress}
        return RunPublic.model_validate(self._call("POST", f"/runs/{run_id}/progress", json=_clean(body),
                                                   idempotent=True))

    def heartbeat(self, run_id: int, unit: str, worker: str, *, done: bool = False) -> HeartbeatPublic:
        body = {"unit": unit, "worker": worker, "done": done}
        return HeartbeatPublic.model_validate(self._call("POST", f"/runs/{run_id}/heartbeats", json=body,
                                                         idempotent=True))


def _clean(d: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Drop None values (query parameters and optional body fields left to the server's defaults)."""
    return None if d is None else {k: v for k, v in d.items() if v is not None}


def _error(r: httpx.Response) -> ApiError:
    try:
        body = r.json()
        detail, errors = str(body.get("detail") or r.reason_phrase), body.get("errors")
    except (ValueError, AttributeError):
        detail, errors = (r.text.strip().splitlines() or [r.reason_phrase])[0], None
    return ApiError(r.status_code, detail, errors if isinstance(errors, list) else None)

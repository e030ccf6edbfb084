"""The one Python client of the copd REST API (httpx): the CLI, the workers and the dashboard all use it.

Every method is one endpoint of docs/api.md and returns the body as its contract.schemas model. A failure
raises `ApiError` with the HTTP status (0 when the API could not be reached), the server's one-line
`detail`, the per-field `errors` of a 422 and a `message` for people (what went wrong and what to do).
Workers pass `retry_s` so that a restarting API (connection refused, 502/503/504) is waited for instead
of failing a unit; requests that are not idempotent are retried only when they never reached the server.
"""

from __future__ import annotations

import re
import time
from typing import Any, Iterable, Mapping

import httpx

from contract.schemas import (
    CheckpointList,
    CheckpointPublic,
    EventList,
    EventPublic,
    HeartbeatPublic,
    LeasePublic,
    MarkerList,
    MarkerPublic,
    KnobsPublic,
    RunList,
    RunPublic,
    SamplesPublic,
    SamplesWritten,
    SeriesList,
    Vocab,
)
from contract.settings import Settings, get_settings

API_PREFIX = "/api/v1"
RETRY_STATUS = frozenset({502, 503, 504})
# Errors after which the request surely never reached the server: safe to resend anything.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


_FIELD_IN_DETAIL = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\-]*): (.+)$")
_TITLES = {401: "Not authorized", 403: "Forbidden", 404: "Not found", 409: "Conflict", 413: "Too large",
           422: "Invalid", 503: "Unavailable"}
START_HINT = "start it with `copd api` (or `copd up`), or set COPD_API_URL to where it runs"


class ApiError(Exception):
    """A failed API call: `status` (0 = the API could not be reached), the server's one-line `detail`, the
    per-field `errors` of a 422, and a `hint` of what to do."""

    def __init__(self, status: int, detail: str, errors: list[dict[str, Any]] | None = None,
                 hint: str = "", *, url: str = "") -> None:
        super().__init__(f"{status}: {detail}" if status else detail)
        self.status = status
        self.detail = detail
        self.errors = errors or []
        self.hint = hint
        self.url = url

    @classmethod
    def unreachable(cls, url: str, reason: str) -> "ApiError":
        return cls(0, f"cannot reach the API at {url} ({reason})", hint=START_HINT, url=url)

    @property
    def message(self) -> str:
        """One readable line: what went wrong, the API's words, and what to do about it."""
        if not self.status:
            head = f"API not reachable at {self.url} ({self.detail.split(' (', 1)[-1]}" if self.url else self.detail
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


def read_token(settings: Settings) -> str | None:
    """COPD_API_TOKEN, else the token file the API writes at first start (<COPD_DATA_DIR>/token), else None."""
    if settings.api_token:
        return settings.api_token
    try:
        return settings.token_file.read_text().strip() or None
    except OSError:
        return None


class Client:
    """Typed access to /api/v1. Use as a context manager, or call `close()`."""

    def __init__(self, base_url: str, token: str | None, *, timeout: float = 30.0, retry_s: float = 0.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry_s = retry_s
        self.resent = False  # whether the last request was sent more than once (a retry)
        self.has_token = bool(token)
        self._args = (token, timeout, transport)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport, headers=headers)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **kwargs: Any) -> "Client":
        """A client for COPD_API_URL with COPD_API_TOKEN (or the token file in COPD_DATA_DIR); ApiError
        when there is no token at all."""
        settings = settings or get_settings()
        token = read_token(settings)
        if token is None:
            raise ApiError(0, f"no API token: set COPD_API_TOKEN, or start the API once so that it writes "
                              f"{settings.token_file}")
        return cls(settings.api_url, token, **kwargs)

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
        self.resent = False
        while True:
            try:
                r = self._http.request(method, url, json=json, params=_clean(params))
            except httpx.TransportError as err:
                retry = isinstance(err, NOT_SENT) or idempotent
                if not retry or time.monotonic() + delay > deadline:
                    raise ApiError.unreachable(self.base_url, f"{type(err).__name__}: {err}") from None
            else:
                if r.status_code < 400:
                    return None if r.status_code == 204 or not r.content else r.json()
                if r.status_code not in RETRY_STATUS or time.monotonic() + delay > deadline:
                    raise _error(r, self.has_token)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
            self.resent = True

    def healthz(self) -> dict[str, Any]:
        return self._call("GET", "/healthz")

    def vocab(self) -> Vocab:
        """Every strategy, domain, verifier, status and metric key the server knows."""
        return Vocab.model_validate(self._call("GET", "/vocab"))

    # ---- runs ------------------------------------------------------------------------------------
    def create_run(self, spec: Mapping[str, Any] | Any) -> RunPublic:
        """POST a run spec (a mapping or a contract.spec.RunSpec): a new draft run."""
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
        """Upsert points {expert, key, step, value, cycle?, wall_time?}; (expert, key, step) is stored once."""
        out = self._call("POST", f"/runs/{run_id}/metrics", json={"points": points}, idempotent=True)
        return int(out["points"])

    def get_metrics(self, run_id: int, key: str | None = None, expert: str | None = None,
                    max_points: int = 2000) -> SeriesList:
        """Series of the run (`expert=""`: run-level series only), each min/max-downsampled to `max_points`."""
        params = {"key": key, "expert": expert, "max_points": max_points}
        return SeriesList.model_validate(self._call("GET", f"/runs/{run_id}/metrics", params=params))

    # ---- checkpoints -----------------------------------------------------------------------------
    def register_checkpoint(self, run_id: int, *, expert: str, cycle: int, step: int, uri: str, sha256: str,
                            bytes: int, metrics: Mapping[str, float] | None = None,
                            final: bool = False, optimizer: bool | None = None) -> CheckpointPublic:
        """Register (or update: same expert, cycle, step) a checkpoint record."""
        body = {"expert": expert, "cycle": cycle, "step": step, "uri": uri, "sha256": sha256, "bytes": bytes,
                "metrics": dict(metrics or {}), "final": final}
        if optimizer is not None:
            body["optimizer"] = optimizer
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

    def mark_deleted(self, run_id: int, checkpoint_id: int, reason: str = "retention") -> CheckpointPublic:
        """The checkpoint's files were deleted (the record stays, with `deleted_at`)."""
        return CheckpointPublic.model_validate(self._call(
            "POST", f"/runs/{run_id}/checkpoints/{checkpoint_id}/deleted", json={"reason": reason}, idempotent=True))

    # ---- unit markers and leases (workers on hosts without a shared disk) ------------------------
    def list_markers(self, run_id: int, kind: str | None = None) -> MarkerList:
        return MarkerList.model_validate(self._call("GET", f"/runs/{run_id}/markers", params={"kind": kind}))

    def put_marker(self, run_id: int, kind: str, name: str, body: Mapping[str, Any] | None = None, *,
                   exclusive: bool = False) -> MarkerPublic:
        """Record a marker (replacing it; with `exclusive`, 409 when it exists: a claim)."""
        req = {"kind": kind, "name": name, "body": dict(body or {}), "exclusive": exclusive}
        return MarkerPublic.model_validate(self._call("POST", f"/runs/{run_id}/markers", json=req,
                                                      idempotent=not exclusive))

    def lease(self, run_id: int, unit: str, worker: str, ttl_s: float) -> LeasePublic:
        """Take or renew a unit's lease (granted: False while another worker's heartbeat of it is fresh)."""
        req = {"unit": unit, "worker": worker, "ttl_s": ttl_s}
        return LeasePublic.model_validate(self._call("POST", f"/runs/{run_id}/leases", json=req, idempotent=True))

    # ---- events ----------------------------------------------------------------------------------
    def post_event(self, run_id: int, message: str, level: str = "info", expert: str | None = None) -> EventPublic:
        body = {"message": message, "level": level, "expert": expert}
        return EventPublic.model_validate(self._call("POST", f"/runs/{run_id}/events", json=body))

    def list_events(self, run_id: int, after_id: int = 0, level: str | None = None, limit: int = 100) -> EventList:
        params = {"after_id": after_id, "level": level, "limit": limit}
        return EventList.model_validate(self._call("GET", f"/runs/{run_id}/events", params=params))

    # ---- sample prompts --------------------------------------------------------------------------
    def post_samples(self, run_id: int, cycle: int, samples: list[Mapping[str, Any] | Any]) -> int:
        """An evaluation's sample prompts (PromptSample bodies or mappings); returns the prompts stored."""
        items = [s.model_dump(mode="json") if hasattr(s, "model_dump") else dict(s) for s in samples]
        body = self._call("POST", f"/runs/{run_id}/samples", json={"cycle": cycle, "samples": items},
                          idempotent=True)  # an upsert: sending it twice stores the same rows
        return SamplesWritten.model_validate(body).samples

    def get_samples(self, run_id: int, cycle: int | None = None) -> SamplesPublic:
        return SamplesPublic.model_validate(self._call("GET", f"/runs/{run_id}/samples", params={"cycle": cycle}))

    # ---- worker reports --------------------------------------------------------------------------
    def report_status(self, run_id: int, status: str, message: str | None = None, *,
                      resumable: bool = False) -> RunPublic:
        """running | completed | failed (409 when the run is not in a state that allows it); `failed` with
        `resumable` makes the run `crashed`, which `resume` continues."""
        body = {"status": status, "message": message, "resumable": resumable or None}
        try:
            return RunPublic.model_validate(self._call("POST", f"/runs/{run_id}/status", json=_clean(body)))
        except ApiError as err:
            # A resent report whose first send was applied after all (the answer was lost: a 503 while the
            # database dropped the connection at commit) is refused as a repeat; it did what was asked.
            if err.status != 409 or not self.resent:
                raise
            run = self.get_run(run_id)
            if run.status != ("crashed" if status == "failed" and resumable else status):
                raise err from None
            return run

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


def _error(r: httpx.Response, has_token: bool = True) -> ApiError:
    try:
        body = r.json()
        detail, errors = str(body.get("detail") or r.reason_phrase), body.get("errors")
    except (ValueError, AttributeError):
        detail, errors = (r.text.strip().splitlines() or [r.reason_phrase])[0][:200], None
    hint = {401: "set COPD_API_TOKEN to a valid token (or put it in <COPD_DATA_DIR>/token)",
            403: "this token's role may not do that; use a write token"}.get(r.status_code, "")
    if not has_token and r.status_code == 401:
        hint = "no token found: set COPD_API_TOKEN or COPD_DATA_DIR (whose `token` file the API wrote)"
    return ApiError(r.status_code, detail, errors if isinstance(errors, list) else None, hint)

"""Streamlit helpers shared by the pages: the API client of this session, errors, messages, formats."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

import streamlit as st

from contract.schemas import Vocab
from contract.schemas import vocab as own_vocab
from contract.settings import Settings
from contract.vocab import ACTIVE, CANCELLED, COMPLETED, CRASHED, DRAFT, FAILED, PAUSED, QUEUED, RUNNING, TERMINAL  # noqa: F401
from ui.api import Api, ApiError, read_token

# Seconds between refreshes of the live parts (status, knobs, events) and of the charts.
LIVE_S = float(os.environ.get("COPD_UI_REFRESH_S", "3"))
CHARTS_S = max(LIVE_S, float(os.environ.get("COPD_UI_CHARTS_REFRESH_S", "10")))
STATUS_COLORS = {DRAFT: "gray", QUEUED: "violet", RUNNING: "blue", PAUSED: "orange",
                 COMPLETED: "green", FAILED: "red", CANCELLED: "gray", CRASHED: "red"}


@st.cache_resource(show_spinner=False)
def _client(url: str, token: str | None) -> Api:
    return Api(url, token)


def client() -> Api:
    """The API client: URL and token from session state (`api_url`, `api_token`) or the environment."""
    settings = Settings()
    url = st.session_state.get("api_url") or settings.api_url
    token = st.session_state.get("api_token") or read_token(settings)
    return _client(url, token)


@st.cache_data(ttl=300, show_spinner=False)
def _vocab(url: str, token: str | None) -> dict:
    try:
        return _client(url, token).vocab().model_dump()
    except ApiError:
        return own_vocab().model_dump()  # an API of a release before GET /vocab: this release's own names


def vocab() -> Vocab:
    """Every strategy, builtin domain, verifier and status the API knows (GET /vocab), cached for 5 min."""
    settings = Settings()
    url = st.session_state.get("api_url") or settings.api_url
    token = st.session_state.get("api_token") or read_token(settings)
    return Vocab.model_validate(_vocab(url, token))


def show_error(err: ApiError, what: str = "") -> None:
    """A readable error box (never a traceback)."""
    st.error(f"{what}: {err.message}" if what else err.message, icon=":material/error:")


def flash(scope: str, kind: str, text: str) -> None:
    """A message to show after the next rerun (kind: success | info | warning | error)."""
    st.session_state.setdefault("_flash", {}).setdefault(scope, []).append((kind, text))


def show_flashes(scope: str) -> None:
    for kind, text in st.session_state.get("_flash", {}).pop(scope, []):
        getattr(st, kind)(text)


def run_id_param(name: str = "run") -> int | None:
    """An integer id from the query string, or None; a malformed one is an error message."""
    raw = st.query_params.get(name)
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
        if value < 1:
            raise ValueError
        return value
    except ValueError:
        st.error(f"`?{name}={raw}` is not a run id (a positive integer).")
        return None


def status_badge(status: str) -> None:
    st.badge(status, color=STATUS_COLORS.get(status, "gray"))  # type: ignore[arg-type]


def parse_time(iso: str | None) -> datetime | None:
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def fmt_time(iso: str | None) -> str:
    t = parse_time(iso)
    return t.strftime("%Y-%m-%d %H:%M:%S") if t else "—"


def fmt_duration(start: str | None, end: str | None) -> str:
    """'1h 02m', '3m 05s', … from two ISO times (end None = until now)."""
    t0 = parse_time(start)
    if t0 is None:
        return "—"
    secs = int(((parse_time(end) or datetime.now(timezone.utc)) - t0).total_seconds())
    h, rest = divmod(max(secs, 0), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def compact(value: Any, top: bool = True) -> str:
    """A knob value or change as one short line: `beta: 0.5, teacher_weights: text: {image: 0.5}`."""
    if isinstance(value, dict):
        inner = ", ".join(f"{k}: {compact(v, top=False)}" for k, v in value.items())
        return inner if top else "{" + inner + "}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def run_label(run: dict[str, Any]) -> str:
    return f"#{run['id']} {run['name']} ({run['strategy']}, {run['status']})"

"""FastAPI dependencies: the per-request session, the dispatcher, the caller's token, typed path ids."""

from __future__ import annotations

from typing import Annotated, Callable, Iterator

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from contract.settings import Settings
from server import crud
from server.auth import RANK, Principal, hash_token
from server.dispatch import Dispatcher
from server.errors import Forbidden, Unauthorized
from server.schemas import MAX_ID


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; closing it rolls back whatever was not committed."""
    with request.app.state.sessions() as session:
        yield session


def get_dispatcher(request: Request) -> Dispatcher:
    """How work reaches the workers; tests swap it through app.dependency_overrides."""
    return request.app.state.dispatcher


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


SessionDep = Annotated[Session, Depends(get_session)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]

_bearer = HTTPBearer(auto_error=False, description="A copd API token (admin, write or read).")


def _principal(session: Session, credentials: str | None, role: str) -> Principal:
    if not credentials:
        raise Unauthorized("Authorization: send `Authorization: Bearer <token>`")
    tok = crud.find_token(session, token_hash=hash_token(credentials))
    if tok is None:
        raise Unauthorized("Authorization: unknown or revoked token")
    if RANK.get(tok.role, -1) < RANK[role]:
        raise Forbidden(f"Authorization: this needs a {role} token; '{tok.name}' is {tok.role}")
    return Principal(tok.name, tok.role)


def authenticate(request: Request, role: str) -> Principal:
    """The caller's token checked for `role` (401/403), from the headers alone: server.guard calls it, in a
    worker thread, before a request's body is read."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    with request.app.state.sessions() as session:
        return _principal(session, credentials.strip() if scheme.lower() == "bearer" else None, role)


def require(role: str) -> Callable[..., Principal]:
    """A dependency that admits tokens of `role` or higher: 401 without a valid token, 403 below the role."""

    def check(request: Request, session: SessionDep,
              creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
        checked = getattr(request.state, "copd_principal", None)
        if checked is not None:  # server.guard checked this route's role before reading the body
            return checked
        return _principal(session, creds.credentials if creds is not None else None, role)

    check.copd_role = role  # type: ignore[attr-defined]  # server.guard reads it
    return check


Reader = Annotated[Principal, Depends(require("read"))]
Writer = Annotated[Principal, Depends(require("write"))]
Admin = Annotated[Principal, Depends(require("admin"))]

RunId = Annotated[int, Path(ge=1, le=MAX_ID, description="Run id.")]
CheckpointId = Annotated[int, Path(ge=1, le=MAX_ID, description="Checkpoint id.")]

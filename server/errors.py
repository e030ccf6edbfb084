"""API errors and their JSON shape: every 4xx body is {"detail": "<one line naming the field>", "errors": [...]}."""

from __future__ import annotations

import logging
import re
from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from contract.schemas import MAX_ERRORS  # errors listed in `errors`; `error_count` says how many in all

log = logging.getLogger("copd.server")

_LOC_HEADS = {"body", "query", "path", "header", "cookie"}
# Labels pydantic puts in a loc for union members and wrapped validators; they are not field names.
_TYPE_LABELS = {"str", "int", "float", "bool"}  # no field of ours has these names
_LABEL_PREFIXES = ("function-", "constrained-", "lax-or-strict", "json-or-python", "tagged-union",
                   "nullable", "chain", "default", "is-instance", "literal")
_MISMATCH = re.compile(r"(_type|_parsing|_instance_of|union_tag_invalid)$")
_FIELD_IN_MSG = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\-]*): (.+)$")
MAX_LISTED = 3  # errors spelled out in `detail`


class ApiError(Exception):
    """An expected failure with a status and a one-line detail naming the field."""

    status = 400
    headers: dict[str, str] | None = None

    def __init__(self, detail: str, errors: list[dict[str, Any]] | None = None, count: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.count = count


class Unauthorized(ApiError):
    status = 401
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class Invalid(ApiError):
    status = 422


class Unavailable(ApiError):
    status = 503


def _model_names() -> set[str]:
    seen: set[str] = set()
    stack = list(BaseModel.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls.__name__ not in seen:
            seen.add(cls.__name__)
            stack.extend(cls.__subclasses__())
    return seen


def _is_label(part: Any, models: set[str]) -> bool:
    if not isinstance(part, str):
        return False
    return "[" in part or part in _TYPE_LABELS or part in models or part.startswith(_LABEL_PREFIXES)


def field_errors(errors: Sequence[dict[str, Any]], prefix: str = "", request: bool = False,
                 limit: int | None = None) -> list[dict[str, str]]:
    """Pydantic / FastAPI errors as [{"field", "message", "type"}], union noise removed; linear in the number
    of errors. `limit`: keep only the first that many (the caller reports how many there were).

    `request`: the locs start with where the value came from (body, query, path), which is dropped.
    """
    models = _model_names()
    rows = []  # (field, message, type, union group or None)
    for e in errors:
        loc = list(e.get("loc", ()))
        if request and loc and loc[0] in _LOC_HEADS and len(loc) > 1:
            loc = loc[1:]
        group = None
        parts = []
        for i, part in enumerate(loc):
            if _is_label(part, models):
                group = group or tuple(loc[:i])
                continue
            parts.append(str(part))
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if e.get("type") == "json_invalid":
            parts = ["body"]
            where = f" at position {loc[0]}" if loc and isinstance(loc[0], int) else ""
            msg = f"invalid JSON ({(e.get('ctx') or {}).get('error', 'decode error')}{where})"
        elif parts in ([], ["body"]) and (m := _FIELD_IN_MSG.match(msg)):  # model-level validators name the field first
            parts, msg = [m.group(1)], m.group(2)
        elif e.get("type") == "value_error" and (m := _FIELD_IN_MSG.match(msg)):  # ... of a nested model
            parts, msg = parts + [m.group(1)], m.group(2)
        field = ".".join(([prefix] if prefix else []) + parts) or "body"
        rows.append((field, msg, str(e.get("type", "")), group))
    # Of a union's branches, keep the errors of the branch that matched the input's type: a group's
    # type-mismatch errors go when the group has any other error.
    matched = {row[3] for row in rows if row[3] is not None and not _MISMATCH.search(row[2])}
    out: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for field, msg, typ, group in rows:
        if group is not None and group in matched and _MISMATCH.search(typ):
            continue
        if (field, msg) not in seen:
            seen.add((field, msg))
            out.append({"field": field, "message": msg, "type": typ})
    return out if limit is None else out[:limit]


def one_line(errors: list[dict[str, str]], total: int | None = None) -> str:
    """`field: message; field: message (+N more)`; `total`: how many errors there were (default: all given)."""
    total = len(errors) if total is None else total
    parts = [f"{e['field']}: {e['message']}" for e in errors[:MAX_LISTED]]
    more = f" (+{total - len(parts)} more)" if total > len(parts) else ""
    return "; ".join(parts) + more


def capped(errors: list[dict[str, str]]) -> tuple[str, list[dict[str, str]], int]:
    """(detail, the first MAX_ERRORS errors, how many there were)."""
    return one_line(errors), errors[:MAX_ERRORS], len(errors)


def invalid_from(err: ValidationError, prefix: str = "") -> Invalid:
    """A 422 from a pydantic ValidationError, fields prefixed (e.g. `changes.lr`)."""
    detail, errs, total = capped(field_errors(err.errors(include_url=False, include_input=False), prefix))
    return Invalid(detail, errs, total)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _body(detail: str, errors: list[dict[str, Any]] | None = None, count: int | None = None) -> dict[str, Any]:
    # A field name can be user input (a dict key); keep the detail one printable line.
    detail = _CONTROL.sub(lambda m: repr(m.group())[1:-1], detail)
    errors = (errors or [])[:MAX_ERRORS]
    count = len(errors) if count is None else count
    return {"detail": detail, "errors": errors, "error_count": max(count, len(errors))}


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(_body(exc.detail, exc.errors, exc.count), status_code=exc.status, headers=exc.headers)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    detail, errs, total = capped(field_errors(exc.errors(), request=True))
    return JSONResponse(_body(detail, errs, total), status_code=422)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:  # Starlette names only the first route of the path; name every method it has
        headers["Allow"] = ", ".join(allowed_methods(request))
    return JSONResponse(_body(detail), status_code=exc.status_code, headers=headers or None)


def allowed_methods(request: Request) -> list[str]:
    """Every method the app's routes serve at this request's path (for a 405's Allow header)."""
    from starlette.routing import Match

    methods: set[str] = set()
    scope = {**request.scope, "method": "\0"}  # match on the path alone

    def walk(routes) -> None:
        for route in routes:
            if getattr(route, "routes", None) is not None and not getattr(route, "methods", None):
                walk(route.routes)
            elif route.matches(scope)[0] != Match.NONE and getattr(route, "methods", None):
                methods.update(route.methods)

    walk(request.app.routes)
    return sorted(methods)


RETRY_AFTER_S = 2  # the Retry-After of a 503: a database that restarts is usually back within seconds


def is_transient_db_error(exc: BaseException) -> bool:
    """The database was unreachable, dropped the connection, restarted, was locked or broke a deadlock:
    nothing was committed, and the same request may simply be sent again."""
    if isinstance(exc, (sa_exc.TimeoutError, sa_exc.DisconnectionError)):  # pool exhausted; connection lost
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        return exc.connection_invalidated or isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError))
    return False


async def _db_error(request: Request, exc: Exception) -> JSONResponse:
    if not is_transient_db_error(exc):
        return await _unhandled(request, exc)
    first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[:1]
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, first[0] if first else exc)
    return JSONResponse(_body("database: unavailable (connection lost or restarting); retry shortly"),
                        status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(_body("internal error; the server log has the details"), status_code=500)


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the same JSON shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(sa_exc.SQLAlchemyError, _db_error)  # lost connection → 503; other errors → 500
    app.add_exception_handler(Exception, _unhandled)

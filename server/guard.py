"""Reject, before validation, JSON values no database or JSON response can hold.

Python's json module reads NaN, Infinity, "\\u0000" and lone surrogates; PostgreSQL refuses NUL and
non-finite JSON numbers, UTF-8 cannot encode a lone surrogate, and a response holding NaN cannot be
written. Without this check they would surface as 500s deep in a query.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Coroutine

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.errors import Invalid


def _bad_str(s: str) -> str | None:
    if "\x00" in s:
        return "must not contain NUL characters"
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            return "must be valid Unicode (lone surrogate)"
    return None


def find_bad_value(data: Any) -> tuple[str, str] | None:
    """(field path, why) of the first value that cannot be stored, or None. Iterative: any depth is fine."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        why = None
        if isinstance(value, str):
            why = _bad_str(value)
        elif isinstance(value, float):
            why = None if math.isfinite(value) else "must be a finite number (no NaN or Infinity)"
        elif isinstance(value, dict):
            for k, v in value.items():
                if (kwhy := _bad_str(k)) is not None:
                    return ".".join(map(str, path)) or "body", f"key {kwhy}"
                stack.append((v, path + (k,)))
        elif isinstance(value, list):
            stack.extend((v, path + (i,)) for i, v in enumerate(value))
        if why is not None:
            return ".".join(map(str, path)) or "body", why
    return None


def _suspicious(data: Any) -> bool:
    """Fast pre-check in C: only bodies it flags are walked value by value."""
    try:
        text = json.dumps(data, allow_nan=False)  # raises on NaN/Infinity
    except (ValueError, RecursionError):
        return True
    return "\\u0000" in text or "\\ud" in text  # NUL, or a surrogate (pairs are checked exactly by the walk)


def check_body(data: Any) -> None:
    """Raise a 422 naming the first field whose value no backend can store."""
    if _suspicious(data) and (bad := find_bad_value(data)) is not None:
        field, why = bad
        raise Invalid(f"{field}: {why}", [{"field": field, "message": why, "type": "value_error"}])


def _is_json(request: Request) -> bool:
    ctype = request.headers.get("content-type", "")
    return ctype.split(";")[0].strip().lower().endswith("json")


async def _json(request: Request) -> Any:
    try:
        return await request.json()  # cached on the request; FastAPI reuses it
    except StarletteHTTPException:
        raise  # e.g. 413 from the body-size limit
    except json.JSONDecodeError as err:
        raise Invalid(f"body: invalid JSON ({err.msg} at position {err.pos})") from None
    except Exception as err:  # not UTF-8, nested too deep, ...
        raise Invalid(f"body: not readable as JSON ({type(err).__name__})") from None


class GuardedRoute(APIRoute):
    """An APIRoute that checks query strings and JSON bodies with `check_body` first."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            for k, v in request.query_params.multi_items():
                if (why := _bad_str(k) or _bad_str(v)) is not None:
                    raise Invalid(f"{k}: {why}")
            if request.method in ("POST", "PUT", "PATCH") and _is_json(request) and await request.body():
                check_body(await _json(request))
            return await handler(request)

        return guarded


def router(**kwargs: Any) -> APIRouter:
    """An APIRouter whose routes are guarded."""
    return APIRouter(route_class=GuardedRoute, **kwargs)


class BodyTooLarge(StarletteHTTPException):
    def __init__(self) -> None:
        super().__init__(status_code=413, detail="body: request too large")


class BodyLimit:
    """ASGI middleware: 413 (JSON, like every error) for bodies over `max_bytes`, declared or streamed."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge()  # an HTTPException: the app's handler answers it
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, send: Callable) -> None:
        body = json.dumps({"detail": f"body: request too large (limit {self.max_bytes} bytes)", "errors": []}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

"""What every request body goes through before FastAPI validates it, in this order:

1. the caller's token is checked (401/403) before a byte of the body is read, so an unauthenticated body
   costs nothing but its headers;
2. the body is read up to the route's cap (`max_body`: 1 MiB, 8 MiB for metric batches; 413 beyond) —
   the app-wide BodyLimit middleware is the outer bound;
3. it is parsed and checked in a worker thread, never in the event loop (a large body does not hold up
   `/healthz` or anyone else's request): JSON values no database or JSON response can hold are refused.

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
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from contract.schemas import ErrorBody
from server.errors import Invalid

DEFAULT_MAX_BODY = 2**20  # bytes a route reads unless it says otherwise (`max_body`)
BODY_METHODS = ("POST", "PUT", "PATCH")


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


def _parsed_as_json(request: Request) -> bool:
    """FastAPI reads a body as JSON when its content type is JSON, or absent."""
    ctype = request.headers.get("content-type", "")
    return not ctype or ctype.split(";")[0].strip().lower().endswith("json")


def parse_and_check(body: bytes) -> Any:
    """The body as JSON, refused (422) when it is not JSON or holds a value no backend can store."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError as err:
        raise Invalid(f"body: invalid JSON ({err.msg} at position {err.pos})") from None
    except Exception as err:  # not UTF-8, nested too deep, ...
        raise Invalid(f"body: not readable as JSON ({type(err).__name__})") from None
    check_body(data)
    return data


def required_role(route: APIRoute) -> str | None:
    """The role a route's token dependency asks for (server.deps.require marks it), or None."""
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if (role := getattr(dep.call, "copd_role", None)) is not None:
            return role
        stack.extend(dep.dependencies)
    return None


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# The error model in OpenAPI: every guarded route documents the errors it can answer, all with ErrorBody.
ERRORS: dict[int, dict[str, Any]] = {
    401: _error("No token, not a bearer token, or an unknown or revoked one (`WWW-Authenticate: Bearer`)."),
    403: _error("The token's role is below what this needs (read < write < admin)."),
    404: _error("No such run (or checkpoint, knob version, token): `detail` names the id."),
    413: _error("The body is over this route's limit; `detail` says the limit."),
    422: _error("Malformed: `detail` names the field(s); `errors` lists the first 20, `error_count` all."),
    503: _error("The database is unavailable (restarting, connection lost) or the broker refused a dispatch: "
                "nothing was changed; retry (`Retry-After`)."),
}


def conflict(description: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` of a route that can answer 409."""
    return {409: _error(description)}


class GuardedRoute(APIRoute):
    """An APIRoute that checks query strings, then the token, then reads, parses and checks a JSON body
    (in a worker thread) before FastAPI sees it. Bodies are capped at DEFAULT_MAX_BODY, or `max_body(n)`.
    Its OpenAPI operation lists the errors it can answer (ERRORS; 409 where the route says `conflict`)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        responses = dict(kwargs.pop("responses", None) or {})
        for code, doc in ERRORS.items():
            responses.setdefault(code, doc)
        super().__init__(path, endpoint, responses=responses, **kwargs)
        role = required_role(self)
        drop = set() if role is not None else {401, 403}
        if role == "read":  # every token may read
            drop.add(403)
        if "{" not in self.path:
            drop.add(404)
        if self.body_field is None:
            drop.add(413)
        for code in drop:
            self.responses.pop(code, None)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        role = required_role(self)
        has_body = self.body_field is not None
        cap = getattr(self.endpoint, "copd_max_body", DEFAULT_MAX_BODY)

        async def guarded(request: Request) -> Response:
            for k, v in request.query_params.multi_items():
                if (why := _bad_str(k) or _bad_str(v)) is not None:
                    raise Invalid(f"{k}: {why}")
            if has_body and request.method in BODY_METHODS:
                if role is not None:  # 401/403 before the body is read
                    from server.deps import authenticate

                    request.state.copd_principal = await run_in_threadpool(authenticate, request, role)
                declared = request.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > cap:
                    raise BodyTooLarge(cap)
                body = await request.body()
                if len(body) > cap:
                    raise BodyTooLarge(cap)
                if body and _parsed_as_json(request):
                    request._json = await run_in_threadpool(parse_and_check, body)  # FastAPI reuses it
            return await handler(request)

        return guarded


def max_body(limit: int) -> Callable[[Any], Any]:
    """Decorate an endpoint (under its @api.post) to read bodies of up to `limit` bytes."""
    def mark(fn: Any) -> Any:
        fn.copd_max_body = limit
        return fn
    return mark


def router(**kwargs: Any) -> APIRouter:
    """An APIRouter whose routes are guarded."""
    return APIRouter(route_class=GuardedRoute, **kwargs)


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int | None = None) -> None:
        where = f" (limit {limit} bytes)" if limit else ""
        super().__init__(status_code=413, detail=f"body: request too large{where}")


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
        body = json.dumps({"detail": f"body: request too large (limit {self.max_bytes} bytes)", "errors": [],
                           "error_count": 0}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

"""The FastAPI application: create_app(settings) wires engine, routes, errors, auth bootstrap and the reaper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from contract import __version__
from contract.settings import Settings, get_settings
from server import crud
from server.auth import ADMIN_NAME, admin_token, hash_token
from server.db import make_engine, make_sessionmaker, require_head
from server.dispatch import CeleryDispatcher
from server.errors import install as install_error_handlers
from server.guard import BodyLimit, router
from server.integrations import Integrations
from server.reaper import reaper_loop
from server.routes import (checkpoints, events, health, knobs, lifecycle, markers, metrics, runs, samples, tokens,
                           vocab, worker)

log = logging.getLogger("copd.server")
MAX_BODY = 8 * 2**20  # bytes, any route (the outer bound; routes cap lower: server.guard, 1 MiB unless they say)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Refuse to start on an un-migrated database or a placeholder token; run the reaper while up."""
    settings: Settings = app.state.settings
    task = exports = None
    try:
        require_head(app.state.engine)
        token, source = admin_token(settings)
        with app.state.sessions() as session:
            crud.ensure_admin_token(session, name=ADMIN_NAME, token_hash=hash_token(token))
        app.state.admin_token_source = source
        if settings.reaper_interval_s > 0:
            task = asyncio.create_task(reaper_loop(app.state.sessions, settings.reaper_interval_s,
                                                   settings.heartbeat_timeout_s, app.state.dispatcher,
                                                   settings.stall_timeout_s))
        if settings.export_interval_s > 0:
            exports = asyncio.create_task(export_loop(app.state.integrations, settings.export_interval_s))
        yield
    finally:
        for t in (task, exports):
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        await asyncio.to_thread(app.state.integrations.close)
        app.state.engine.dispose()


async def export_loop(integrations: Integrations, interval_s: float) -> None:
    """Every `interval_s`, the trackers' and alerts' pass (server/integrations.py) in a worker thread."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(integrations.poll)
        except Exception:
            log.exception("integrations pass failed; trying again in %g s", interval_s)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API over the database in `settings` (default: the COPD_* environment)."""
    settings = settings or get_settings()
    # /docs and /redoc with their scripts served from the installed fastapi-offline package, not a CDN:
    # lab servers are often offline, and the stock pages are blank there.
    app = FastAPIOffline(title="copd control plane", version=__version__, lifespan=lifespan,
                  description="Runs, experts, knobs, metrics, checkpoints and events of CoPD training runs. "
                              "Every endpoint but /healthz needs `Authorization: Bearer <token>`.")
    app.state.settings = settings
    app.state.engine = make_engine(settings.db_url)
    app.state.sessions = make_sessionmaker(app.state.engine)
    app.state.dispatcher = CeleryDispatcher(settings)
    app.state.integrations = Integrations(settings, app.state.sessions)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY)
    app.include_router(health.api)
    v1 = router(prefix="/api/v1")
    for module in (runs, lifecycle, knobs, metrics, checkpoints, markers, events, samples, worker, tokens, vocab):
        v1.include_router(module.api)
    app.include_router(v1)
    return app

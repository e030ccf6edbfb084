"""Liveness, without a token: GET /healthz (and /api/v1/healthz)."""

from __future__ import annotations

from fastapi import APIRouter

from contract import __version__
from server.schemas import Health

api = APIRouter(tags=["health"])


@api.get("/healthz", response_model=Health)
@api.get("/api/v1/healthz", response_model=Health, include_in_schema=False)
def healthz() -> Health:
    return Health(version=__version__)

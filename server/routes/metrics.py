"""Metrics: idempotent batch ingestion and downsampled series."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request

from server import crud
from server.deps import Reader, RunId, SessionDep, Writer
from server.guard import max_body, router
from server.schemas import MetricBatch, MetricsWritten, SeriesList

api = router(tags=["metrics"])
METRICS_MAX_BODY = 8 * 2**20  # bytes: a full batch of 10,000 points with the longest names is about 3 MB


@api.post("/runs/{run_id}/metrics", response_model=MetricsWritten)
@max_body(METRICS_MAX_BODY)
def post_metrics(run_id: RunId, batch: MetricBatch, session: SessionDep, _: Writer, request: Request) -> MetricsWritten:
    """Up to 10,000 points; (expert, key, step) is stored once, the last write wins; all or nothing."""
    written = crud.write_metrics(session, run_id=run_id, points=batch.points)
    request.app.state.integrations.on_metrics(session, run_id, batch.points)  # trackers and metric rules
    return MetricsWritten(points=written)


@api.get("/runs/{run_id}/metrics", response_model=SeriesList)
def get_metrics(
    run_id: RunId, session: SessionDep, _: Reader,
    key: Annotated[str | None, Query(max_length=128, description="Only this key.")] = None,
    expert: Annotated[str | None, Query(max_length=64, description="Only this expert; empty = run-level.")] = None,
    max_points: Annotated[int, Query(ge=2, le=100_000, description="Longer series are min/max-downsampled.")] = 2000,
) -> SeriesList:
    """Series by key and expert, ordered by step."""
    series = crud.read_series(session, run_id=run_id, key=key, expert=expert, max_points=max_points)
    return SeriesList.model_construct(series=series)

"""Sample prompts: each domain's few held-out prompts per evaluation, with thumbnails and every evaluated
policy's answer (the eval unit posts them; the dashboard's Samples section reads them)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from server import crud
from server.deps import Reader, RunId, SessionDep, Writer
from server.guard import max_body, router
from server.schemas import (MAX_CYCLE, PromptSample, SampleAnswer, SamplesPublic, SamplesReport,
                            SamplesWritten)

api = router(tags=["samples"])
# 64 prompts × 16 thumbnails of at most 64 KiB would be 64 MiB; a real eval sends a few dozen small PNGs
SAMPLES_MAX_BODY = 4 * 2**20  # bytes


@api.post("/runs/{run_id}/samples", response_model=SamplesWritten)
@max_body(SAMPLES_MAX_BODY)
def post_samples(run_id: RunId, body: SamplesReport, session: SessionDep, _: Writer) -> SamplesWritten:
    """Up to 64 prompts of one cycle; a prompt the cycle has already is updated, its answers merged by model."""
    return SamplesWritten(samples=crud.put_samples(session, run_id=run_id, cycle=body.cycle, samples=body.samples))


@api.get("/runs/{run_id}/samples", response_model=SamplesPublic)
def get_samples(run_id: RunId, session: SessionDep, _: Reader,
                cycle: Annotated[int | None, Query(ge=0, le=MAX_CYCLE,
                                                   description="This cycle (default: the latest with samples).")]
                = None) -> SamplesPublic:
    """One cycle's sample prompts by domain, then index; `cycles` lists every cycle that has some."""
    shown, cycles, rows = crud.read_samples(session, run_id=run_id, cycle=cycle)
    items = [PromptSample.model_construct(
        domain=r.domain, index=r.position, prompt=r.prompt, reference=r.reference, images=list(r.images),
        answers=[SampleAnswer.model_construct(model=m, **a) for m, a in r.answers.items()]) for r in rows]
    return SamplesPublic(cycle=shown, cycles=cycles, samples=items)

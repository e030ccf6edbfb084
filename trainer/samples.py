"""Sample prompts for the dashboard: each domain's first few held-out prompts (the same every cycle), their
images as small PNG thumbnails, and every evaluated policy's greedy answer (from the eval's own rollout)."""

from __future__ import annotations

import base64
from typing import Any, Mapping

from contract.schemas import MAX_SAMPLE_IMAGES, MAX_THUMB_PX, PromptSample, SampleAnswer
from trainer.domains.base import Domain, Sample

SAMPLES_PER_DOMAIN = 4  # prompts of each domain shown (the first of its held-out prompts)


def thumbnail(src: bytes | str, px: int = MAX_THUMB_PX) -> bytes:
    """A PNG of the image with its longest side at most `px` pixels (aspect kept; never enlarged)."""
    from PIL import Image

    from trainer.domains.images import open_image, png

    image = open_image(src)
    image.thumbnail((px, px), Image.Resampling.LANCZOS)
    return png(image)


def clean(text: str, limit: int) -> str:
    r"""Text any JSON body and database can hold: no NUL, no lone surrogate, at most `limit` characters.

    >>> clean("a\x00b" + chr(0xD800) + "c", 10)
    'ab?c'
    """
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")[:limit]


def prompt_sample(owner: str, index: int, sample: Sample) -> PromptSample:
    """The sample as the REST body shows it, without answers (long texts cut to the body's limits; a video
    of more than 16 frames keeps its first 16)."""
    images = [base64.b64encode(thumbnail(src)).decode("ascii") for src in sample.images[:MAX_SAMPLE_IMAGES]]
    return PromptSample(domain=owner, index=index, prompt=clean(sample.prompt, 20_000),
                        reference=clean(sample.answer, 4_000),
                        images=images)


class SampleSheet:
    """Collects one evaluation's sample prompts and the answers of each policy evaluated on them."""

    def __init__(self, domains: Mapping[str, Domain], n_prompts: int) -> None:
        n = min(SAMPLES_PER_DOMAIN, n_prompts)
        self.prompts = {owner: [prompt_sample(owner, i, s) for i, s in enumerate(dom.eval[:n])]
                        for owner, dom in domains.items()}

    def add(self, model: str, owner: str, texts: list[str], scores: list[float]) -> None:
        """`model`'s greedy answers to `owner`'s held-out prompts, in order (only the first few are kept)."""
        for p, text, score in zip(self.prompts[owner], texts, scores):
            score = min(1.0, max(0.0, float(score)))
            p.answers.append(SampleAnswer(model=model, answer=clean(text, 4_000), score=score, correct=score >= 1.0))

    def items(self) -> list[PromptSample]:
        return [p for prompts in self.prompts.values() for p in prompts]


def report_samples(reporter: Any, cycle: int, sheet: SampleSheet) -> None:
    """Hand the sheet to the reporter; a reporter without `samples` (a test's recorder) is skipped."""
    send = getattr(reporter, "samples", None)
    items = sheet.items()
    if send is not None and items:
        send(cycle, items)

"""Sample prompts: thumbnails keep the aspect ratio within 96 px, the sheet keeps the first prompts' answers."""

import base64
import io

from PIL import Image

from trainer.domains.base import Domain, Sample
from trainer.samples import SampleSheet, thumbnail


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), "blue").save(buf, format="PNG")
    return buf.getvalue()


def test_thumbnail_fits_96_px_and_keeps_small_images():
    assert Image.open(io.BytesIO(thumbnail(_png(300, 150)))).size == (96, 48)
    assert Image.open(io.BytesIO(thumbnail(_png(56, 56)))).size == (56, 56)  # never enlarged


def test_sheet_takes_the_first_four_held_out_prompts_and_scores_answers():
    evals = [Sample(prompt=f"{i}+1=", answer=str(i + 1), images=(_png(120, 60),) if i % 2 else ()) for i in range(6)]
    dom = Domain(key="t", train=[], eval=evals, verifier=lambda c, s: float(c == s.answer))
    sheet = SampleSheet({"text": dom}, n_prompts=16)
    sheet.add("a", "text", ["1", "3", "9", "4", "5", "6"], [1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    items = sheet.items()
    assert [(p.index, p.prompt, p.reference) for p in items] == [(i, f"{i}+1=", str(i + 1)) for i in range(4)]
    assert [[(a.model, a.answer, a.correct) for a in p.answers] for p in items] == [
        [("a", "1", True)], [("a", "3", False)], [("a", "9", False)], [("a", "4", True)]]
    assert [len(p.images) for p in items] == [0, 1, 0, 1]
    assert Image.open(io.BytesIO(base64.b64decode(items[1].images[0]))).size == (96, 48)
    assert len(SampleSheet({"text": dom}, n_prompts=2).items()) == 2  # never more than the eval's prompts
    sheet.add("b", "text", ["1\x00"], [1.0])  # a tokenizer's NUL would make the body unstorable
    assert items[0].answers[-1].answer == "1"

"""`builtin:grid`, the image-reasoning stand-in: questions about a small picture of `.`, `#` and `o`.

The picture is 4 rows x 5 columns, written row by row with `/` between rows, then `|` and a question:

- `#?`: how many `#` cells (0-20);
- `r?`: which row (1-4, top first) holds the most `#` (pictures with a tie are redrawn);
- `c?`: which column (1-5, left first) holds the most `#` (likewise without ties): the 2-D question,
  since a column's cells lie 6 characters apart.

`o` cells are clutter that no question counts. A prompt is 26 characters.

>>> build(0).eval[0]
Sample(prompt='o#.../..#../..oo./..#.#|c?', answer='3')
"""

from __future__ import annotations

import functools
import random

from trainer.domains.base import Domain, Sample, draw_splits, held_out
from trainer.domains.verifiers import score_exact

KEY = "builtin:grid"
TRAIN_SIZE, EVAL_SIZE = 4000, 512
ROWS, COLS = 4, 5  # the most that fits 28 characters with its question
CELLS, CELL_WEIGHTS = ".#o", (0.60, 0.20, 0.20)  # few `#`: small counts, a skill the tiny model learns
QUESTIONS, QUESTION_WEIGHTS = ("#?", "r?", "c?"), (0.4, 0.3, 0.3)
_SALT = 0x6F1D


def _argmax_unique(counts: list[int]) -> int | None:
    """1-based index of the largest count, or None on a tie for the largest."""
    top = max(counts)
    return counts.index(top) + 1 if counts.count(top) == 1 else None


def answer(rows: list[str], question: str) -> str | None:
    """The answer to `question` about the picture `rows`, or None when it has a tie."""
    if question == "#?":
        return str(sum(r.count("#") for r in rows))
    if question == "r?":
        best = _argmax_unique([r.count("#") for r in rows])
    else:
        best = _argmax_unique([sum(r[c] == "#" for r in rows) for c in range(COLS)])
    return None if best is None else str(best)


def draw(rng: random.Random) -> Sample:
    """One random picture-and-question sample (redrawn until the question has one answer)."""
    question = rng.choices(QUESTIONS, QUESTION_WEIGHTS)[0]
    while True:
        rows = ["".join(rng.choices(CELLS, CELL_WEIGHTS, k=COLS)) for _ in range(ROWS)]
        ans = answer(rows, question)
        if ans is not None:
            return Sample(f"{'/'.join(rows)}|{question}", ans)


def habit(sample: Sample) -> str:
    """The warm start's systematic mistake: off by one (one `#` too many; the row or column after the right one)."""
    return str(int(sample.answer) + 1)


def build(seed: int) -> Domain:
    """The grid domain for `seed`: 4000 train and 512 eval samples, no prompt in both."""
    train, eval_ = draw_splits(random.Random(seed ^ _SALT), draw, TRAIN_SIZE, EVAL_SIZE,
                                 functools.partial(held_out, KEY))
    return Domain(key=KEY, train=train, eval=eval_, verifier=score_exact, habit=habit)

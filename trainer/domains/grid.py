"""`builtin:grid`, the image-reasoning stand-in: find the object in a small picture, and count.

The picture is 3 rows x 4 columns of `.` (background), `#` and `o` (clutter), with exactly one `@` (the
object), written row by row with `/` between rows, then `|` and a question:

- `@?`: where the `@` is, as two digits: its row (1-3, top first) then its column (1-4, left first),
  e.g. `23`: the 2-D localisation question (a column's cells lie 5 characters apart);
- `#?`: how many `#` cells there are (0-11).

A prompt is 17 characters. The object is the skill most of the questions ask for: its answer has 12
values, so guessing from the answers' spread scores about 1/12, and a base model in the warm start's band
has learned to look (a question with few likely answers, such as which of 4 rows, is passed by guessing).

>>> build(0).eval[0]
Sample(prompt='#o.o/.o../o@..|#?', answer='1')
"""

from __future__ import annotations

import functools
import random

from trainer.domains.base import Domain, Sample, draw_splits, held_out
from trainer.domains.verifiers import score_exact

KEY = "builtin:grid"
TRAIN_SIZE, EVAL_SIZE = 4000, 512
ROWS, COLS = 3, 4  # small enough that a 0.6M-parameter model learns to locate within its warm start
CELLS, CELL_WEIGHTS = ".#o", (0.60, 0.15, 0.25)  # few `#`: small counts
OBJECT = "@"
QUESTIONS, QUESTION_WEIGHTS = ("@?", "#?"), (0.6, 0.4)
_SALT = 0x6F1D


def answer(rows: list[str], question: str) -> str:
    """The answer to `question` about the picture `rows`."""
    if question == "#?":
        return str(sum(r.count("#") for r in rows))
    (r, c), = [(i, row.index(OBJECT)) for i, row in enumerate(rows) if OBJECT in row]
    return f"{r + 1}{c + 1}"


def draw(rng: random.Random) -> Sample:
    """One random picture-and-question sample."""
    question = rng.choices(QUESTIONS, QUESTION_WEIGHTS)[0]
    cells = [rng.choices(CELLS, CELL_WEIGHTS, k=COLS) for _ in range(ROWS)]
    cells[rng.randrange(ROWS)][rng.randrange(COLS)] = OBJECT
    rows = ["".join(r) for r in cells]
    return Sample(f"{'/'.join(rows)}|{question}", answer(rows, question))


def habit(sample: Sample) -> str:
    """The warm start's systematic mistake: off by one (one `#` too many; the `@` one column further right)."""
    if sample.prompt.endswith("@?"):
        return sample.answer[0] + str(int(sample.answer[1]) + 1)
    return str(int(sample.answer) + 1)


def build(seed: int) -> Domain:
    """The grid domain for `seed`: 4000 train and 512 eval samples, no prompt in both."""
    train, eval_ = draw_splits(random.Random(seed ^ _SALT), draw, TRAIN_SIZE, EVAL_SIZE,
                                 functools.partial(held_out, KEY))
    return Domain(key=KEY, train=train, eval=eval_, verifier=score_exact, habit=habit)

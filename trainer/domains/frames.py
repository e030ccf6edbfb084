"""`builtin:frames`, the video-reasoning stand-in: track one object `x` across 3 or 4 frames.

Each frame is a strip of 4-6 cells, the same width throughout a clip (so where a frame starts varies
from clip to clip, as a video's resolution does). `x` moves at a constant velocity of up to 2 cells a
frame, always inside the strip; `o` specks flicker at random in each frame, like sensor noise.
In half the clips one column is a wall `#` in every frame, and `x` is hidden while it is behind it (so
the model must infer where it is). Frames are joined by `/`, then `|` and a question:

- `d?`: displacement of `x` from the first frame to the last, a signed integer (`3`, `0`, `-2`);
- `v?`: its direction, `L` (left), `R` (right) or `S` (still);
- `n?`: its cell (1-6, left first) in the next, unseen frame (asked only when that is inside the strip).

A 4-frame clip is at most 5 cells wide, so that every prompt fits in 28 characters.

>>> build(0).eval[0]
Sample(prompt='x.#../.x#../..#.o/oo#x.|v?', answer='R')
"""

from __future__ import annotations

import functools
import random

from trainer.domains.base import Domain, Sample, draw_splits, held_out
from trainer.domains.verifiers import score_exact

KEY = "builtin:frames"
TRAIN_SIZE, EVAL_SIZE = 4000, 512
WIDTHS = (4, 5, 6)
FRAME_COUNTS = (3, 4)
MAX_PROMPT = 28  # characters
MAX_SPEED = 2  # cells a frame
WALL_P = 0.5  # share of clips with a wall
NOISE_P = 0.1  # chance that an open cell other than x shows an `o` speck, per frame
QUESTIONS = ("d?", "v?", "n?")
_SALT = 0xF7A3


def answer(positions: list[int], question: str) -> str:
    """The answer to `question` given x's cell in each shown frame and, for `n?`, in the next one."""
    if question == "n?":
        return str(positions[-1] + 1)
    moved = positions[-1] - positions[0]
    if question == "d?":
        return str(moved)
    return "R" if moved > 0 else "L" if moved < 0 else "S"


def _trajectory(rng: random.Random, steps: int, width: int) -> list[int]:
    """x's cell in `steps` frames: constant velocity, inside a strip `width` cells wide throughout."""
    top = min(MAX_SPEED, (width - 1) // (steps - 1))
    v = rng.randint(-top, top)
    span = abs(v) * (steps - 1)
    start = rng.randint(0, width - 1 - span) + (span if v < 0 else 0)
    return [start + v * t for t in range(steps)]


def _frame(rng: random.Random, x: int, wall: int | None, width: int) -> str:
    """One strip: the wall hides whatever is behind it, x shows elsewhere, open cells may speckle."""
    return "".join("#" if c == wall else "x" if c == x else "o" if rng.random() < NOISE_P else "."
                   for c in range(width))


def draw(rng: random.Random) -> Sample:
    """One random clip-and-question sample (redrawn while x would stay hidden in more than one frame)."""
    question, n = rng.choice(QUESTIONS), rng.choice(FRAME_COUNTS)
    width = rng.choice([w for w in WIDTHS if n * (w + 1) + len(question) <= MAX_PROMPT])  # n strips, n-1 '/', '|'
    while True:
        positions = _trajectory(rng, n + 1 if question == "n?" else n, width)  # n? needs the next frame too
        wall = rng.randrange(width) if rng.random() < WALL_P else None
        if sum(p == wall for p in positions[:n]) <= 1:
            break
    clip = "/".join(_frame(rng, p, wall, width) for p in positions[:n])
    return Sample(f"{clip}|{question}", answer(positions, question))


def habit(sample: Sample) -> str:
    """The warm start's systematic mistake: x seen one cell further right than it is in the last frame
    (`d?` and `n?` one more; `v?` one step more to the right: L becomes S, S becomes R)."""
    if sample.prompt.endswith("v?"):
        return {"L": "S", "S": "R", "R": "R"}[sample.answer]
    return str(int(sample.answer) + 1)


def build(seed: int) -> Domain:
    """The frames domain for `seed`: 4000 train and 512 eval samples, no prompt in both."""
    train, eval_ = draw_splits(random.Random(seed ^ _SALT), draw, TRAIN_SIZE, EVAL_SIZE,
                                 functools.partial(held_out, KEY))
    return Domain(key=KEY, train=train, eval=eval_, verifier=score_exact, habit=habit)

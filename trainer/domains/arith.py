"""`builtin:arith`, the text-reasoning stand-in: two-digit addition, and some subtraction.

A prompt is `a+b=` or `a-b=` with 10 <= a, b <= 99 (subtraction only when a >= b, so the answer is never
negative); the answer is the result in decimal, 1 to 3 characters. Most prompts are additions.

>>> build(0).eval[0]
Sample(prompt='51-28=', answer='23')
"""

from __future__ import annotations

import random

from trainer.domains.base import draw_splits
from trainer.domains.base import Domain, Sample
from trainer.domains.verifiers import score_exact

KEY = "builtin:arith"
TRAIN_SIZE, EVAL_SIZE = 4000, 512
SUBTRACT_P = 0.25  # share of subtraction prompts
_SALT = 0xA217  # per-domain, so seed 0 of arith and of grid draw unrelated streams


def draw(rng: random.Random) -> Sample:
    """One random arithmetic sample."""
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if rng.random() < SUBTRACT_P:
        a, b = max(a, b), min(a, b)
        return Sample(f"{a}-{b}=", str(a - b))
    return Sample(f"{a}+{b}=", str(a + b))


def build(seed: int) -> Domain:
    """The arith domain for `seed`: 4000 train and 512 eval samples, no prompt in both."""
    train, eval_ = draw_splits(random.Random(seed ^ _SALT), draw, TRAIN_SIZE, EVAL_SIZE)
    return Domain(key=KEY, train=train, eval=eval_, verifier=score_exact)

"""`builtin:arith`, the text-reasoning stand-in: two-digit addition, and some subtraction.

A prompt is `a+b=` or `a-b=` with 10 <= a, b <= 99 (subtraction only when a >= b, so the answer is never
negative); the answer is the result in decimal, 1 to 3 characters. Most prompts are additions. The units
never carry or borrow (a sum of units digits stays below 10; a subtraction's units digit of a is at least
b's): a skill that a 0.6M-parameter character model learns in a few thousand supervised steps, where full
carrying takes far longer. The tens may still carry into a hundreds digit (`57+61=118`).

>>> build(0).eval[0]
Sample(prompt='51-30=', answer='21')
"""

from __future__ import annotations

import functools
import random

from trainer.domains.base import Domain, Sample, draw_splits, held_out
from trainer.domains.verifiers import score_exact

KEY = "builtin:arith"
TRAIN_SIZE, EVAL_SIZE = 4000, 512
SUBTRACT_P = 0.25  # share of subtraction prompts
_SALT = 0xA217  # per-domain, so seed 0 of arith and of grid draw unrelated streams


def draw(rng: random.Random) -> Sample:
    """One random arithmetic sample."""
    subtract = rng.random() < SUBTRACT_P
    while True:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if subtract:
            a, b = max(a, b), min(a, b)
            if a % 10 >= b % 10:
                return Sample(f"{a}-{b}=", str(a - b))
        elif a % 10 + b % 10 < 10:
            return Sample(f"{a}+{b}=", str(a + b))


def habit(sample: Sample) -> str:
    """The warm start's systematic mistake: one more than the result."""
    return str(int(sample.answer) + 1)


def build(seed: int) -> Domain:
    """The arith domain for `seed`: 4000 train and 512 eval samples, no prompt in both."""
    train, eval_ = draw_splits(random.Random(seed ^ _SALT), draw, TRAIN_SIZE, EVAL_SIZE,
                                 functools.partial(held_out, KEY))
    return Domain(key=KEY, train=train, eval=eval_, verifier=score_exact, habit=habit)

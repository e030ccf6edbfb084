"""Conflict domains: the same two numbers, a different function per domain (for the divergence-cost suites).

Three families, three domains each:

- `builtin:marked_sum | marked_absdiff | marked_max`: prompt `ax,y=`, `bx,y=`, `cx,y=` with
  10 <= x, y <= 99; the answer is x+y, |x−y|, max(x, y). The marker names the domain.
- `builtin:offset_0 | offset_1 | offset_2`: prompt `ax,y=`, `b…`, `c…`; the answer x+y, x+y+1, x+y+2
  (near-identical skills that disagree on the last digit).
- `builtin:implicit_sum | implicit_absdiff | implicit_max`: prompt `x,y=` with NO marker and 0 <= y <= 119;
  the domain is told by the range of x (0–39 sum, 40–79 |x−y|, 80–119 max), so it must be inferred from
  the content. (Wider ranges than the marked ones: a third of [10, 99]² would not give 4512 prompts.)

The train split does not depend on the run's seed and the eval prompts come from a held-out pool that does
not either (`held_out`, 1/8 of the prompts by hash): so the runs of many seeds share one warm-started base
model (its cache key hashes the train split), and no seed's eval prompt is a train prompt of any seed. The
run's seed draws the eval prompts from the pool and, in training, the order and sampling.

No spaces, and only `a`, `b` and `,` beyond the other builtins' characters (one small shared alphabet).

>>> build("builtin:marked_absdiff", 0).eval[0]
Sample(prompt='b30,91=', answer='61')
>>> 80 <= int(build("builtin:implicit_max", 0).eval[0].prompt.split(",")[0]) <= 119
True
"""

from __future__ import annotations

import functools
import random
from typing import Callable

from trainer.domains.base import Domain, Sample, draw_splits, held_out
from trainer.domains.verifiers import score_exact

# name → (marker or None, x range, y range, function)
_OPS: dict[str, tuple[str | None, tuple[int, int], tuple[int, int], Callable[[int, int], int]]] = {
    "marked_sum": ("a", (10, 99), (10, 99), lambda x, y: x + y),
    "marked_absdiff": ("b", (10, 99), (10, 99), lambda x, y: abs(x - y)),
    "marked_max": ("c", (10, 99), (10, 99), max),
    "offset_0": ("a", (10, 99), (10, 99), lambda x, y: x + y),
    "offset_1": ("b", (10, 99), (10, 99), lambda x, y: x + y + 1),
    "offset_2": ("c", (10, 99), (10, 99), lambda x, y: x + y + 2),
    # 40 × 120 = 4800 distinct prompts each, enough for 4000 train + 512 eval
    "implicit_sum": (None, (0, 39), (0, 119), lambda x, y: x + y),
    "implicit_absdiff": (None, (40, 79), (0, 119), lambda x, y: abs(x - y)),
    "implicit_max": (None, (80, 119), (0, 119), max),
}
KEYS = tuple(f"builtin:{n}" for n in _OPS)
TRAIN_SIZE, EVAL_SIZE = 4000, 512


def drawer(name: str) -> Callable[[random.Random], Sample]:
    """The sample generator of one conflict domain."""
    marker, (x_lo, x_hi), (y_lo, y_hi), fn = _OPS[name]

    def draw(rng: random.Random) -> Sample:
        x, y = rng.randint(x_lo, x_hi), rng.randint(y_lo, y_hi)
        return Sample(f"{marker or ''}{x},{y}=", str(fn(x, y)))

    return draw


def build(key: str, seed: int) -> Domain:
    """A conflict domain for `seed`: 4000 train samples (the same for every seed) and 512 eval samples (drawn
    by `seed` from the held-out pool), no prompt in both."""
    name = key.removeprefix("builtin:")
    salt = sum(ord(c) * 131 ** i for i, c in enumerate(name)) & 0xFFFF
    pool = functools.partial(held_out, key)
    train, _ = draw_splits(random.Random(salt), drawer(name), TRAIN_SIZE, 0, pool)
    _, eval_ = draw_splits(random.Random(seed ^ salt), drawer(name), 0, EVAL_SIZE, pool)
    return Domain(key=key, train=train, eval=eval_, verifier=score_exact)

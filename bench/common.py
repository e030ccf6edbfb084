"""What every comparison shares: the workload (model, tokenizer, prompts), the alternating timer, peak memory."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from trainer.domains import Domain, load_domain
from trainer.models import build_char_tokenizer, build_tiny_model
from contract.spec import TinyModelSpec

NATIVE, TEACHER_DOMAINS = "builtin:arith", ("builtin:grid", "builtin:frames")
MODELS = {  # the builtin:tiny recipe, and a larger one so results are not only per-op overhead
    "tiny": TinyModelSpec(),
    "small": TinyModelSpec(hidden_size=256, layers=4, heads=4, kv_heads=2, intermediate_size=768),
}


@dataclass(frozen=True)
class Sizes:
    """How big one step is: prompts × group (native), teacher prompts × samples (cross), completion cap."""

    prompts: int = 8
    group: int = 8
    max_new_tokens: int = 16
    opd_prompts: int = 4
    opd_samples: int = 4
    rollout_prompts: int = 64
    rollout_samples: int = 8


@dataclass
class Workload:
    """One model recipe built once; every side starts from a copy of the same initial weights."""

    name: str
    tokenizer: object
    state: dict
    recipe: TinyModelSpec
    domains: dict[str, Domain] = field(repr=False)

    def model(self):
        """A fresh fp32 model with the shared initial weights (train mode off)."""
        m = build_tiny_model(self.recipe, self.tokenizer, seed=0)
        m.load_state_dict(self.state)
        return m.eval()


def workload(name: str) -> Workload:
    """The `builtin:tiny` recipe `name` (random init, no warm start) over the arith / grid / frames alphabet."""
    domains = {k: load_domain(k, 0) for k in (NATIVE, *TEACHER_DOMAINS)}
    alphabet: set[str] = set()
    for d in domains.values():
        alphabet |= d.alphabet()
    tok = build_char_tokenizer(alphabet)
    model = build_tiny_model(MODELS[name], tok, seed=0)
    return Workload(name, tok, {k: v.clone() for k, v in model.state_dict().items()}, MODELS[name], domains)


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


@dataclass
class Timing:
    """Per-repeat seconds and sampled tokens of one side."""

    seconds: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def tokens_per_s(self) -> float:
        return statistics.median(t / s for t, s in zip(self.tokens, self.seconds))



Step = Callable[[], int]  # runs one unit of work, returns the completion tokens it sampled


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def alternate(sides: dict[str, Step], warmup: int, repeats: int, clock: str = "wall") -> dict[str, Timing]:
    """Run the sides in turn (A B C, A B C, …) after `warmup` untimed rounds; the order rotates per round.

    clock: "wall" (perf_counter) or "cpu" (this process's CPU time: on a machine other jobs load, it leaves
    out the time the process waited for a core; with 1 torch thread it equals wall time on an idle machine).
    """
    now = CLOCKS[clock]
    names = list(sides)
    for _ in range(warmup):
        for n in names:
            sides[n]()
    out = {n: Timing() for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:  # no side always runs right after another
            torch.manual_seed(1000 + r)
            t0 = now()
            tokens = sides[n]()
            out[n].seconds.append(now() - t0)
            out[n].tokens.append(tokens)
    return out

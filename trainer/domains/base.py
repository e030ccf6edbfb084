"""What a domain is: a prompt source with disjoint train / eval splits, plus a verifier."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

# A verifier is a pure function of a completion and its sample: 1.0 right, 0.0 wrong (or partial credit).
Verifier = Callable[[str, "Sample"], float]


@dataclass(frozen=True)
class Sample:
    """One prompt with its reference answer."""

    prompt: str
    answer: str


@dataclass(frozen=True)
class Domain:
    """A prompt source plus a verifier. `train` and `eval` never share a prompt."""

    key: str                    # 'builtin:arith', or 'jsonl:<path>'
    train: Sequence[Sample]
    eval: Sequence[Sample]
    verifier: Verifier = field(repr=False)

    def score(self, completion: str, sample: Sample) -> float:
        """Reward of one completion (the text the model produced after the prompt, EOS stripped)."""
        return float(self.verifier(completion, sample))

    def alphabet(self) -> set[str]:
        """Every character in the prompts and answers (the tiny model's tokenizer is built from it)."""
        chars: set[str] = set()
        for s in (*self.train, *self.eval):
            chars.update(s.prompt)
            chars.update(s.answer)
        return chars


class DomainError(ValueError):
    """A domain that cannot be built; the message is one line naming the problem."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).splitlines()))


def draw_splits(rng: random.Random, draw: Callable[[random.Random], Sample], n_train: int,
                n_eval: int) -> tuple[tuple[Sample, ...], tuple[Sample, ...]]:
    """(train, eval) of samples with distinct prompts drawn from `draw`; the first `n_eval` drawn are eval."""
    by_prompt: dict[str, Sample] = {}
    budget = 50 * (n_train + n_eval)  # a generator this short of distinct prompts is a bug, not bad luck
    for _ in range(budget):
        s = draw(rng)
        by_prompt.setdefault(s.prompt, s)
        if len(by_prompt) == n_train + n_eval:
            samples = tuple(by_prompt.values())
            return samples[n_eval:], samples[:n_eval]
    raise DomainError(f"only {len(by_prompt)} distinct prompts in {budget} draws; need {n_train + n_eval}")

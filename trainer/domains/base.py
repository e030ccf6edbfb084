"""What a domain is: a prompt source with disjoint train / eval splits, plus a verifier."""

from __future__ import annotations

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
    # A builtin domain's systematic mistake: the wrong answer `builtin:tiny`'s warm start teaches for a share
    # of the train prompts (trainer/models.py), so the base model knows the skill but has a bad habit that
    # RLVR must find and unlearn from rewards alone. None: the warm start uses the true answers only.
    habit: Callable[["Sample"], str] | None = field(default=None, repr=False, compare=False)

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

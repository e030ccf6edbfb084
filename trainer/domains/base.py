"""What a domain is: a prompt source with disjoint train / eval splits, plus a verifier."""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

# A verifier is a pure function of a completion and its sample: 1.0 right, 0.0 wrong (or partial credit).
Verifier = Callable[[str, "Sample"], float]


_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def has_answer_tag(text: str) -> bool:
    """True when the completion carries an `<answer>...</answer>` (the format reward of R1/DAPO recipes).

    >>> has_answer_tag("<think>3+4</think><answer>7</answer>"), has_answer_tag("7")
    (True, False)
    """
    return _ANSWER_TAG_RE.search(text) is not None


Message = tuple[str, str]  # (role, content) of a chat message


@dataclass(frozen=True)
class Sample:
    """One prompt with its reference answer.

    A chat prompt keeps its `messages` (system first when there is one) and `prompt` is their plain rendering
    (the contents, one per line: what a tokenizer without a chat template sees). `row` is the record the
    sample came from, for reward plugins (not compared, not shown).
    """

    prompt: str
    answer: str
    messages: tuple[Message, ...] | None = field(default=None, repr=False)
    row: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)
    # The prompt's images, in order (a video: its frames), each as encoded file bytes or a file path; what a
    # vision-language model sees before the text (trainer/domains/visual.py). Empty for a text prompt.
    images: tuple[bytes | str, ...] = field(default=(), repr=False, compare=False)

    @property
    def model_input(self) -> "str | list[dict[str, Any]]":
        """What the rollout engines encode: the prompt text, or the chat messages as [{role, content}]; with
        images, the (first user) message's content is parts: the images, then the text."""
        if self.images:
            from trainer.domains.images import visual_messages
            return visual_messages(self)
        if self.messages is None:
            return self.prompt
        return [{"role": r, "content": c} for r, c in self.messages]

    @property
    def pool_key(self) -> str:
        """What tells prompts apart for splits and the held-out pool: the text, and the images when there are any."""
        if not self.images:
            return self.prompt
        h = hashlib.blake2b(digest_size=8)
        for im in self.images:
            h.update(im if isinstance(im, bytes) else im.encode())
            h.update(b"\0")
        return f"{self.prompt}\0{h.hexdigest()}"


@dataclass(frozen=True)
class Domain:
    """A prompt source plus a verifier. `train` and `eval` never share a prompt."""

    key: str                    # 'builtin:arith', 'jsonl:<path>' or 'dataset:<path or hub id>[:<sources>]'
    train: Sequence[Sample]
    eval: Sequence[Sample]
    verifier: Verifier = field(repr=False)
    format_reward: float = 0.0  # share of the training reward for an <answer> tag (spec: format_reward)
    # A builtin domain's systematic mistake: the wrong answer `builtin:tiny`'s warm start teaches for a share
    # of the train prompts (trainer/models.py), so the base model knows the skill but has a bad habit that
    # RLVR must find and unlearn from rewards alone. None: the warm start uses the true answers only.
    habit: Callable[["Sample"], str] | None = field(default=None, repr=False, compare=False)

    def score(self, completion: str, sample: Sample) -> float:
        """Correctness of one completion (the text the model produced after the prompt, EOS stripped):
        the verifier's score, what evaluation reports as accuracy."""
        return float(self.verifier(completion, sample))

    def reward(self, completion: str, sample: Sample) -> tuple[float, dict[str, float]]:
        """Training reward of one completion and its parts (metrics `reward/<key>`): the verifier's score, a
        plugin's extra keys and error flag, and with `format_reward` w: (1 − w)·score + w·[<answer> tag]."""
        detailed = getattr(self.verifier, "detailed", None)
        score, parts = detailed(completion, sample) if detailed is not None else (self.score(completion, sample), {})
        if self.format_reward:
            fmt = float(has_answer_tag(completion))
            parts = {**parts, "correct": score, "format": fmt}
            score = (1.0 - self.format_reward) * score + self.format_reward * fmt
        return float(score), parts

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


def held_out(key: str, prompt: str, share: int = 8) -> bool:
    """True for the prompts of `key`'s held-out pool: a fixed 1/`share` of all its prompts, chosen by hash.

    The pool does not depend on the seed, so no seed's eval prompt is ever a train prompt of another seed,
    and a base model warm-started on train prompts (the one `builtin:tiny` ships) never saw any eval prompt.
    """
    digest = hashlib.blake2b(f"{key}\0{prompt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % share == 0


def draw_splits(rng: random.Random, draw: Callable[[random.Random], Sample], n_train: int,
                n_eval: int, pool: Callable[[str], bool] | None = None) -> tuple[tuple[Sample, ...], tuple[Sample, ...]]:
    """(train, eval) of samples with distinct prompts drawn from `draw`.

    Without `pool`, the first `n_eval` distinct prompts drawn are eval. With `pool` (a predicate on the
    prompt, e.g. `held_out`), eval prompts come only from the pool and train prompts only from outside it.
    """
    if pool is None:
        by_prompt: dict[str, Sample] = {}
        budget = 50 * (n_train + n_eval)  # a generator this short of distinct prompts is a bug, not bad luck
        for _ in range(budget):
            s = draw(rng)
            by_prompt.setdefault(s.pool_key, s)
            if len(by_prompt) == n_train + n_eval:
                samples = tuple(by_prompt.values())
                return samples[n_eval:], samples[:n_eval]
        raise DomainError(f"only {len(by_prompt)} distinct prompts in {budget} draws; need {n_train + n_eval}")
    train: dict[str, Sample] = {}
    eval_: dict[str, Sample] = {}
    budget = 50 * (n_train + n_eval)
    for _ in range(budget):
        s = draw(rng)
        split, cap = (eval_, n_eval) if pool(s.pool_key) else (train, n_train)
        if len(split) < cap:
            split.setdefault(s.pool_key, s)
        if len(train) == n_train and len(eval_) == n_eval:
            return tuple(train.values()), tuple(eval_.values())
    raise DomainError(f"only {len(train)} train and {len(eval_)} held-out distinct prompts in {budget} draws;"
                      f" need {n_train} and {n_eval}")

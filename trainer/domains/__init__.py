"""Domains: prompt sources with disjoint train / eval splits, each with a verifier; `load_domain` picks one.

A spec names a domain as `builtin:arith | builtin:grid | builtin:frames` or as a `JsonlDomain` file.
This package never imports torch: the server validates and previews domains without it.

>>> d = load_domain("builtin:arith", seed=0)
>>> len(d.train), len(d.eval), d.score(d.eval[0].answer, d.eval[0])
(4000, 512, 1.0)
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
from typing import Callable

from trainer.domains.base import Domain, Sample, Verifier
from trainer.spec import JsonlDomain

__all__ = ["BUILTINS", "Domain", "DomainError", "Sample", "Verifier", "draw_splits", "held_out", "load_domain"]


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
            by_prompt.setdefault(s.prompt, s)
            if len(by_prompt) == n_train + n_eval:
                samples = tuple(by_prompt.values())
                return samples[n_eval:], samples[:n_eval]
        raise DomainError(f"only {len(by_prompt)} distinct prompts in {budget} draws; need {n_train + n_eval}")
    train: dict[str, Sample] = {}
    eval_: dict[str, Sample] = {}
    budget = 50 * (n_train + n_eval)
    for _ in range(budget):
        s = draw(rng)
        split, cap = (eval_, n_eval) if pool(s.prompt) else (train, n_train)
        if len(split) < cap:
            split.setdefault(s.prompt, s)
        if len(train) == n_train and len(eval_) == n_eval:
            return tuple(train.values()), tuple(eval_.values())
    raise DomainError(f"only {len(train)} train and {len(eval_)} held-out distinct prompts in {budget} draws;"
                      f" need {n_train} and {n_eval}")


# The builtin modules and jsonl import `DomainError` / `draw_splits` from here, so they come after them.
from trainer.domains import arith, frames, grid, jsonl, marked  # noqa: E402

# Same names, same order as names.BUILTIN_DOMAINS (which the spec validates against; a test checks).
BUILTINS: dict[str, Callable[[int], Domain]] = {
    "builtin:arith": arith.build,
    "builtin:grid": grid.build,
    "builtin:frames": frames.build,
    **{key: functools.partial(marked.build, key) for key in marked.KEYS},
}


# Sample generators of the builtin domains that have a held-out pool (the warm start draws fresh train prompts).
DRAWS: dict[str, Callable[[random.Random], Sample]] = {arith.KEY: arith.draw, grid.KEY: grid.draw, frames.KEY: frames.draw}


def fresh_train_samples(key: str, seed: int, n: int) -> list[Sample] | None:
    """n samples of a builtin domain drawn afresh from outside its held-out pool (repeats allowed), or None."""
    if key not in DRAWS:
        return None
    rng, out = random.Random(f"{key}/warm/{seed}"), []
    while len(out) < n:
        s = DRAWS[key](rng)
        if not held_out(key, s.prompt):
            out.append(s)
    return out


def load_domain(ref: str | JsonlDomain, seed: int = 0) -> Domain:
    """The domain `ref` names, split by `seed`; cached, so repeated calls share one (immutable) Domain."""
    if isinstance(ref, JsonlDomain):
        return _load_jsonl_cached(ref.model_dump_json(), seed, _file_stamp(ref.path))
    if isinstance(ref, str):
        if ref not in BUILTINS:
            raise DomainError(f"unknown domain '{ref}'; builtin domains are {', '.join(BUILTINS)}"
                              " (or give {type: jsonl, path: ...})")
        return _build_builtin(ref, seed)
    raise DomainError(f"domain must be a builtin name or a jsonl domain, not {type(ref).__name__}")


@functools.lru_cache(maxsize=32)
def _build_builtin(name: str, seed: int) -> Domain:
    """One builtin domain (deterministic from the seed, so caching is safe)."""
    return BUILTINS[name](seed)


def _file_stamp(path: str) -> tuple[int, int] | None:
    """(mtime in ns, size in bytes) of a file, so an edited file is read again; None if unreadable."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=32)
def _load_jsonl_cached(spec_json: str, seed: int, stamp: tuple[int, int] | None) -> Domain:
    """One jsonl domain, keyed on its spec, seed and file stamp (errors are not cached)."""
    return jsonl.load_jsonl(JsonlDomain.model_validate_json(spec_json), seed)

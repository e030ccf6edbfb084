"""Domains: prompt sources with disjoint train / eval splits, each with a verifier; `load_domain` picks one.

A spec names a domain as `builtin:arith | builtin:grid | builtin:frames` or as a `JsonlDomain` file.
This package never imports torch: the server validates and previews domains without it.

>>> d = load_domain("builtin:arith", seed=0)
>>> len(d.train), len(d.eval), d.score(d.eval[0].answer, d.eval[0])
(4000, 512, 1.0)
"""

from __future__ import annotations

import functools
import os
from typing import Callable

from contract.spec import JsonlDomain
from trainer.domains import arith, frames, grid, jsonl, marked
from trainer.domains.base import Domain, DomainError, Sample, Verifier, draw_splits

__all__ = ["BUILTINS", "Domain", "DomainError", "Sample", "Verifier", "draw_splits", "load_domain"]

# Same names, same order as contract.vocab.BUILTIN_DOMAINS (which the spec validates against; a test checks).
BUILTINS: dict[str, Callable[[int], Domain]] = {
    "builtin:arith": arith.build,
    "builtin:grid": grid.build,
    "builtin:frames": frames.build,
    **{key: functools.partial(marked.build, key) for key in marked.KEYS},
}


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

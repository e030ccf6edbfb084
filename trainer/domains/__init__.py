"""Domains: prompt sources with disjoint train / eval splits, each with a verifier; `load_domain` picks one.

A spec names a domain as `builtin:arith | builtin:grid | builtin:frames | ...`, a `JsonlDomain` file or a
`DatasetDomain` (parquet / jsonl / json / a dataset folder / a hub id; trainer/domains/dataset.py).
This package never imports torch: the server validates and previews domains without it.

>>> d = load_domain("builtin:arith", seed=0)
>>> len(d.train), len(d.eval), d.score(d.eval[0].answer, d.eval[0])
(4000, 512, 1.0)
"""

from __future__ import annotations

import functools
import os
import random
from typing import Callable

from contract.spec import DatasetDomain, JsonlDomain
from trainer.domains import arith, dataset, frames, grid, jsonl, marked, visual
from trainer.domains.base import Domain, DomainError, Sample, Verifier, draw_splits, held_out

__all__ = ["BUILTINS", "Domain", "DomainError", "Sample", "Verifier", "draw_splits", "held_out", "load_domain"]

# Same names, same order as contract.vocab.BUILTIN_DOMAINS (which the spec validates against; a test checks).
BUILTINS: dict[str, Callable[[int], Domain]] = {
    "builtin:arith": arith.build,
    "builtin:grid": grid.build,
    "builtin:frames": frames.build,
    **{key: functools.partial(marked.build, key) for key in marked.KEYS},
    visual.SHAPES_KEY: visual.build_shapes,   # rendered image and video domains (trainer/domains/visual.py)
    visual.MOTION_KEY: visual.build_motion,
}


# Sample generators of the builtin domains that have a held-out pool (the warm start draws fresh train prompts).
DRAWS: dict[str, Callable[[random.Random], Sample]] = {arith.KEY: arith.draw, grid.KEY: grid.draw, frames.KEY: frames.draw,
                                                       visual.SHAPES_KEY: visual.draw_shapes,
                                                       visual.MOTION_KEY: visual.draw_motion}


def fresh_train_samples(key: str, seed: int, n: int) -> list[Sample] | None:
    """n samples of a builtin domain drawn afresh from outside its held-out pool (repeats allowed), or None."""
    if key not in DRAWS:
        return None
    rng, out = random.Random(f"{key}/warm/{seed}"), []
    while len(out) < n:
        s = DRAWS[key](rng)
        if not held_out(key, s.pool_key):
            out.append(s)
    return out


def load_domain(ref: str | JsonlDomain | DatasetDomain, seed: int = 0) -> Domain:
    """The domain `ref` names, split by `seed`; cached, so repeated calls share one (immutable) Domain."""
    if isinstance(ref, JsonlDomain):
        return _load_jsonl_cached(ref.model_dump_json(), seed, _file_stamp(ref.path))
    if isinstance(ref, DatasetDomain):
        stamps = tuple(_file_stamp(p) for p in (ref.path, ref.eval.path, _plugin_file(ref)) if p is not None)
        return _load_dataset_cached(ref.model_dump_json(), seed, stamps)
    if isinstance(ref, str):
        if ref not in BUILTINS:
            raise DomainError(f"unknown domain '{ref}'; builtin domains are {', '.join(BUILTINS)}"
                              " (or give {type: jsonl, path: ...} / {type: dataset, path: ...})")
        return _build_builtin(ref, seed)
    raise DomainError(f"domain must be a builtin name or a jsonl domain, not {type(ref).__name__}")


@functools.lru_cache(maxsize=32)
def _build_builtin(name: str, seed: int) -> Domain:
    """One builtin domain (deterministic from the seed, so caching is safe)."""
    return BUILTINS[name](seed)


def _file_stamp(path: str) -> tuple[int, int] | None:
    """(mtime in ns, size in bytes) of a file (of a folder: its newest entry), so an edited file is read
    again; None if unreadable."""
    try:
        st = os.stat(path)
        if os.path.isdir(path):
            entries = [os.stat(e.path) for e in os.scandir(path)]
            return max([st.st_mtime_ns] + [e.st_mtime_ns for e in entries]), sum(e.st_size for e in entries)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _plugin_file(ref: DatasetDomain) -> str | None:
    v = ref.verifier
    return v.file if not isinstance(v, str) else None


@functools.lru_cache(maxsize=32)
def _load_dataset_cached(spec_json: str, seed: int, stamps: tuple) -> Domain:
    """One dataset domain, keyed on its spec, seed and file stamps (errors are not cached)."""
    return dataset.load_dataset_domain(DatasetDomain.model_validate_json(spec_json), seed)


@functools.lru_cache(maxsize=32)
def _load_jsonl_cached(spec_json: str, seed: int, stamp: tuple[int, int] | None) -> Domain:
    """One jsonl domain, keyed on its spec, seed and file stamp (errors are not cached)."""
    return jsonl.load_jsonl(JsonlDomain.model_validate_json(spec_json), seed)

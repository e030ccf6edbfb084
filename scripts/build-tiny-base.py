#!/usr/bin/env python
"""Build the base model that `builtin:tiny` ships for the builtin domains (trainer/assets/tiny-base/).

It is the model the warm start would build on a user's machine for builtin:arith, builtin:grid and
builtin:frames with the default recipe (contract.spec.TinyModelSpec) and seed 0, built once here so that a
run loads it in a second instead of warm-starting for minutes, and so that every machine starts from the
same weights (the warm start's thousands of steps amplify float rounding that differs between CPUs).
The warm start never sees a held-out prompt of any seed (trainer.domains.held_out).

    python scripts/build-tiny-base.py            # rebuild it (about 10 minutes on one CPU core)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from trainer.domains import load_domain  # noqa: E402
from trainer.models import SHIPPED_BASE, load_builtin_tiny  # noqa: E402
from contract.spec import TinyModelSpec  # noqa: E402

DOMAINS = ("builtin:arith", "builtin:grid", "builtin:frames")


def main() -> None:
    torch.set_num_threads(1)  # as a run of builtin:tiny does (trainer.models.configure_torch)
    domains = [load_domain(k, seed=0) for k in DOMAINS]
    t0 = time.time()
    with tempfile.TemporaryDirectory() as cache:
        # an empty shipped folder would be loaded as is: build into the cache, then replace it
        shutil.rmtree(SHIPPED_BASE, ignore_errors=True)
        _, _, folder = load_builtin_tiny(TinyModelSpec(), domains, 0, Path(cache), print)
        SHIPPED_BASE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(folder, SHIPPED_BASE)
    print(f"wrote {SHIPPED_BASE} in {time.time() - t0:.0f}s:",
          ", ".join(f"{p.name} {p.stat().st_size / 1e6:.2f} MB" for p in sorted(SHIPPED_BASE.iterdir())))


if __name__ == "__main__":
    main()

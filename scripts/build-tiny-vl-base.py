#!/usr/bin/env python
"""Build the base model that `builtin:tiny-vl` ships for builtin:arith, builtin:shapes and builtin:motion
(trainer/assets/tiny-vl-base/): the model the warm start would build on a user's machine with the default
recipe and seed 0, built once here so that a run loads it in a second.

    python scripts/build-tiny-vl-base.py                    # rebuild it with examples/copd-tiny-vl.yaml's recipe

The recipe is the `tiny:` of examples/copd-tiny-vl.yaml (the default TinyModelSpec where it gives none), so the
example loads the shipped base; warmstart.json records the recipe, the sampled accuracies and the time.
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

from contract.spec import load_spec  # noqa: E402
from trainer.domains import load_domain  # noqa: E402
from trainer.tiny_vl import SHIPPED_VL_BASE, builtin_tiny_vl  # noqa: E402

DOMAINS = ("builtin:arith", "builtin:shapes", "builtin:motion")


def main() -> None:
    torch.set_num_threads(1)  # as a run of builtin:tiny-vl does (trainer.models.configure_torch)
    domains = [load_domain(k, seed=0) for k in DOMAINS]
    t0 = time.time()
    with tempfile.TemporaryDirectory() as cache:
        shutil.rmtree(SHIPPED_VL_BASE, ignore_errors=True)
        recipe = load_spec(ROOT / "examples" / "copd-tiny-vl.yaml").tiny
        _, _, folder = builtin_tiny_vl(recipe, domains, 0, Path(cache), print)
        SHIPPED_VL_BASE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(folder, SHIPPED_VL_BASE)
    print(f"wrote {SHIPPED_VL_BASE} in {time.time() - t0:.0f}s:",
          ", ".join(f"{p.name} {p.stat().st_size / 1e6:.2f} MB" for p in sorted(SHIPPED_VL_BASE.iterdir())))


if __name__ == "__main__":
    main()

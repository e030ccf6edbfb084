"""Profile one side with pyinstrument (bench extra): `python -m bench.profile MODEL COMPARISON SIDE [--steps N]`."""

from __future__ import annotations

import argparse
import warnings


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model"), p.add_argument("comparison"), p.add_argument("side")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--html", default="")
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    import torch
    from pyinstrument import Profiler
    from transformers.utils import logging as hf_logging

    from bench.common import Sizes
    from bench.memory import build

    hf_logging.set_verbosity_error()
    torch.set_num_threads(a.threads)
    step = build(a.model, a.comparison, a.side, Sizes())
    step()  # warm-up
    prof = Profiler(interval=0.0005)
    with prof:
        for _ in range(a.steps):
            step()
    print(prof.output_text(unicode=False, color=False, show_all=False))
    if a.html:
        prof.write_html(a.html)


if __name__ == "__main__":
    main()

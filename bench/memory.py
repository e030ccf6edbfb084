"""Peak memory of one side, measured alone in a fresh process (RSS can't be split between sides of one process).

    python -m bench.memory MODEL COMPARISON SIDE [--smoke]   # prints: peak_mib step_mib

peak_mib: the highest resident set seen (polled every ms) while the side runs two steps; step_mib: that
peak above the resident set after setup (model, optimizer, trainer built), i.e. what the step adds at its
high-water mark. (ru_maxrss is no use here: importing torch + transformers peaks above a tiny model's step.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from bench.common import Sizes, _rss

ROOT = Path(__file__).resolve().parents[1]


def build(model: str, comparison: str, side: str, sizes: Sizes):
    """The step closure of one side (the same constructors `bench.run.compare` uses)."""
    from bench import sides, trl_side
    from bench.common import workload

    wl = workload(model)
    if side.endswith("_before"):
        return sides.without_lean(build(model, comparison, side.removesuffix("_before"), sizes))
    if comparison == "rollout":
        return (trl_side.trl_rollout if side == "trl" else sides.copd_rollout)(wl, sizes)
    if comparison == "grpo_step":
        return {"copd": sides.copd_grpo_step, "hf_baseline": sides.hf_baseline_step, "floor": sides.hf_baseline_step,
                "trl": trl_side.trl_grpo_step}[side](wl, sizes)
    n = int(comparison[len("phase2_")])
    if side == "plain_grpo":
        return sides.copd_grpo_step(wl, sizes, prompts=sides.phase2_rows(sizes, n) // sizes.group)
    if side == "plain_grpo_same":
        return sides.copd_plain_same_step(wl, sizes, n)
    return sides.copd_phase2_step(wl, sizes, n)


def measure(model: str, comparison: str, side: str, smoke: bool, threads: int) -> tuple[float, float]:
    """(peak MiB, step MiB) of a side, from a child process."""
    args = [sys.executable, "-m", "bench.memory", model, comparison, side, "--threads", str(threads)] + ["--smoke"] * smoke
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"})
    peak, step = json.loads(out.stdout.strip().splitlines()[-1])
    return peak, step


def main() -> None:
    import argparse
    import warnings

    import torch
    from transformers.utils import logging as hf_logging

    from bench.run import SMOKE

    p = argparse.ArgumentParser()
    p.add_argument("model"), p.add_argument("comparison"), p.add_argument("side")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    torch.set_num_threads(a.threads)
    step = build(a.model, a.comparison, a.side, SMOKE if a.smoke else Sizes())
    print(json.dumps(peak_of(step)))


def peak_of(step, device=None, steps: int = 2) -> list[float]:
    """[peak MiB, rise over the memory before the first step] while `step` runs `steps` times: resident set
    polled every ms on a CPU, allocated memory on a GPU (torch.cuda.max_memory_allocated)."""
    import torch

    if device is not None and device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device)
        return [peak / 2**20, (peak - base) / 2**20]
    base = peak = _rss()
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.wait(0.001):
            peak = max(peak, _rss())

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    for _ in range(steps):
        step()
    done.set()
    poller.join()
    peak = max(peak, _rss())
    return [peak / 2**20, (peak - base) / 2**20]

if __name__ == "__main__":
    main()

"""Peak memory of merging K experts: the streamed per-tensor merge (trainer/merge.py) vs loading every expert.

    python -m bench.merge_memory [--mb 1024] [--experts 3] [--smoke]

Writes a base and K experts (base + noise) of about `--mb` MiB each as safetensors, then merges them in a
fresh process per way (so one way's memory is not counted against another), polling the resident set every
millisecond: `streamed average`, `streamed ties` (density 0.5) and `in memory` (every expert loaded with
safetensors' load_file, then the old merge_state_dicts). Prints a markdown table: the peak RSS, the peak
above the process's RSS before the merge (torch imported), and that peak as a multiple of one model's size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_models(folder: Path, mib: int, experts: int) -> int:
    """A base and `experts` fine-tunes of ~`mib` MiB (float32, 16 MiB tensors); returns one model's bytes."""
    import torch
    from safetensors.torch import save_file

    n_tensors = max(2, mib // 16)
    g = torch.Generator().manual_seed(0)
    base = {f"layers.{i}.weight": torch.randn(2048, 2048, generator=g) for i in range(n_tensors)}
    save_file(base, str(_mkdir(folder / "base") / "model.safetensors"))
    for k in range(experts):
        sd = {n: t + 0.01 * torch.randn(t.shape, generator=g) for n, t in base.items()}
        save_file(sd, str(_mkdir(folder / f"e{k}") / "model.safetensors"))
        (folder / f"e{k}" / "config.json").write_text("{}")
        del sd
    return sum(t.numel() * t.element_size() for t in base.values())


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def measure(folder: Path, way: str, experts: int) -> dict:
    """Run one way in this process; the peak RSS while it runs and the RSS before it."""
    from bench.common import _rss

    import torch  # noqa: F401  (imported before the baseline, as in a worker)
    from safetensors.torch import load_file, save_file

    from contract.spec import MergeSpec
    from trainer.algos import merge_state_dicts
    from trainer.merge import merge_folders

    sources = [folder / f"e{k}" for k in range(experts)]
    before = _rss()
    peak = [before]
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            stop.wait(0.001)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    w = [1.0 / experts] * experts
    if way == "in_memory":
        merged = merge_state_dicts([load_file(str(s / "model.safetensors")) for s in sources], w)
        save_file(merged, str(_mkdir(folder / "out-mem") / "model.safetensors"))
    else:
        merge = MergeSpec(method="ties", density=0.5) if way == "streamed_ties" else MergeSpec()
        merge_folders(sources, folder / f"out-{way}", w, merge, base=folder / "base")
    stop.set()
    t.join()
    return {"before": before, "peak": peak[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=1024, help="One model's size, MiB.")
    ap.add_argument("--experts", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="64 MiB models: seconds, for a check that it runs.")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(measure(Path(args._child[0]), args._child[1], args.experts)))
        return
    mib = 64 if args.smoke else args.mb
    with tempfile.TemporaryDirectory(prefix="copd-merge-bench-") as tmp:
        folder = Path(tmp)
        size = write_models(folder, mib, args.experts)
        rows = []
        for way in ("streamed_average", "streamed_ties", "in_memory"):
            out = subprocess.run([sys.executable, "-m", "bench.merge_memory", "--experts", str(args.experts),
                                  "--_child", str(folder), way], cwd=ROOT, capture_output=True, text=True, check=True)
            m = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((way, m["peak"], m["peak"] - m["before"]))
    mb = 2**20
    print(f"one model: {size / mb:.0f} MiB (float32); {args.experts} experts + the base")
    print("| way | peak RSS MiB | peak above start MiB | ÷ one model |")
    print("|---|---:|---:|---:|")
    for way, peak, above in rows:
        print(f"| {way} | {peak / mb:.0f} | {above / mb:.0f} | {above / size:.2f} |")


if __name__ == "__main__":
    main()

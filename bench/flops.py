"""This machine's FLOP limit (fp32 matmuls) and each GRPO-step side's share of it.

    python -m bench.flops                       # tiny and small, 1 thread, CPU clock
    python -m bench.flops --models tiny --repeats 7

The limit is the best GFLOP/s of square fp32 matmuls (sizes 256…2048) on the bench's threads. A side's FLOPs
are counted by `torch.utils.flop_counter.FlopCounterMode` over one step (matmuls, convolutions and attention:
what the hardware must execute; elementwise ops are not counted), its time is the median CPU time of the
timed steps (alternating with the other sides, as `python -m bench`). share = FLOPs ÷ time ÷ limit.
"""

from __future__ import annotations

import argparse
import time


def matmul_limit(device, sizes=(256, 512, 1024, 2048), repeats: int = 5) -> tuple[float, dict[int, float]]:
    """(best GFLOP/s, GFLOP/s per size) of fp32 matmuls; CPU time on a CPU (not the wait for a core)."""
    import torch

    per = {}
    for n in sizes:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        reps = max(1, int(2e9 / (2 * n**3)))  # ~2 GFLOP a timing
        a @ b
        best = float("inf")
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
                t0 = time.perf_counter()
            else:
                t0 = time.process_time()
            for _ in range(reps):
                a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()
                dt = time.perf_counter() - t0
            else:
                dt = time.process_time() - t0
            best = min(best, dt / reps)
        per[n] = 2 * n**3 / best / 1e9
    return max(per.values()), per


def count(step) -> tuple[float, int]:
    """(FLOPs, completion tokens) of one call of `step`, counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        tokens = step()
    return float(fc.get_total_flops()), tokens


def sharing_share(wl, sizes) -> str:
    """How much of a GRPO step's counted FLOPs prompt sharing removes, on one fixed batch (the same tokens
    through both paths): the update, and the update plus the sampling that produced the batch."""
    import torch

    from bench.common import NATIVE
    from bench.sides import grpo_spec
    from trainer import rollout
    from trainer.rollout import HFEngine
    from trainer.update import native_batch, update_step

    model, grpo = wl.model(), grpo_spec(sizes)
    engine = HFEngine(model, wl.tokenizer)
    prompts = list(wl.domains[NATIVE].train[: sizes.prompts])
    torch.manual_seed(0)
    f_sample, nb = count(lambda: native_batch(engine, wl.domains[NATIVE], prompts, grpo))
    out = {}
    for share in (True, False):
        rollout.SHARE_PROMPTS = share
        try:
            opt = torch.optim.SGD(model.parameters(), lr=0.0)
            out[share] = count(lambda: update_step(model, opt, nb, [], grpo, 0.0, tis_cap=2.0))[0]
        finally:
            rollout.SHARE_PROMPTS = True
    upd = 1 - out[True] / out[False]
    whole = 1 - (out[True] + f_sample) / (out[False] + f_sample)
    return (f"{wl.name}: prompt sharing removes {upd:.0%} of the training update's counted FLOPs "
            f"({out[False] / 1e9:.2f} → {out[True] / 1e9:.2f} GFLOP) and {whole:.0%} of the whole step's "
            f"(sampling {f_sample / 1e9:.2f} GFLOP, which shares each prompt's prefill too)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.flops", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tiny,small")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    from bench.quiet import quiet_offline

    torch = quiet_offline(a.threads)
    from bench import sides, trl_side
    from bench.common import Sizes, alternate, workload
    from bench.run import environment

    print(environment())
    limit, per = matmul_limit(torch.device("cpu"))
    print(f"fp32 matmul limit: {limit:.1f} GFLOP/s ({', '.join(f'{n}: {g:.1f}' for n, g in per.items())})")
    sizes = Sizes()
    print("| model | side | GFLOP/step | median ms (CPU) | GFLOP/s | share of the limit |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for model in a.models.split(","):
        wl = workload(model)
        step = {"copd": sides.copd_grpo_step(wl, sizes),
                "hf_baseline": sides.hf_baseline_step(wl, sizes)}
        if trl_side.available() is not None:
            step["trl"] = trl_side.trl_grpo_step(wl, sizes)
        torch.manual_seed(0)
        flops = {name: count(fn) for name, fn in step.items()}  # one (extra) step each, counted
        timing = alternate(step, a.warmup, a.repeats, "cpu")
        for name, t in timing.items():
            f, _ = flops[name]
            print(f"| {model} | {name} | {f / 1e9:.2f} | {t.median_s * 1e3:.0f} | {f / t.median_s / 1e9:.1f} | "
                  f"{f / t.median_s / 1e9 / limit:.0%} |", flush=True)
        print("\n- " + sharing_share(wl, sizes) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

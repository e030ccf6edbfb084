"""The comparisons of issue 9, run in one process with the sides alternating, and the table they print."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import torch
import transformers

from bench import sides, trl_side
from bench.common import Sizes, Timing, alternate, workload

SMOKE = Sizes(prompts=2, group=2, max_new_tokens=4, opd_prompts=1, opd_samples=2, rollout_prompts=2, rollout_samples=2)


@dataclass(frozen=True)
class Row:
    """One side of one comparison: medians over the repeats, and the ratio to the comparison's reference."""

    model: str
    comparison: str
    side: str
    median_s: float
    tokens_per_s: float
    ratio: float | None          # this side's median time over the reference side's (None for the reference)
    memory: tuple[float, float] | None = None  # (peak RSS, step's rise over setup) in MiB, measured alone

    def markdown(self) -> str:
        ratio = "—" if self.ratio is None else f"{self.ratio:.2f}×"
        mem = "— | —" if self.memory is None else f"{self.memory[0]:.0f} | {self.memory[1]:.0f}"
        return (f"| {self.model} | {self.comparison} | {self.side} | {self.median_s * 1e3:.0f} | "
                f"{1 / self.median_s:.2f} | {self.tokens_per_s:.0f} | {ratio} | {mem} |")


HEADER = ("| model | comparison | side | median ms | steps/s | tokens/s | time ratio | peak RSS MiB | step Δ MiB |\n"
          "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")


def _rows(model: str, comparison: str, timings: dict[str, Timing], reference: str) -> list[Row]:
    ref = timings[reference].median_s
    return [Row(model, comparison, side, t.median_s, t.tokens_per_s, None if side == reference else t.median_s / ref)
            for side, t in timings.items()]


def with_memory(rows: list[Row], smoke: bool, threads: int, log=print) -> list[Row]:
    """Each row with its side's peak memory, measured in a fresh process per side (see bench/memory.py)."""
    from dataclasses import replace

    from bench import memory

    out = []
    for r in rows:
        log(f"memory: {r.model} {r.comparison} {r.side}")
        out.append(replace(r, memory=memory.measure(r.model, r.comparison, r.side, smoke, threads)))
    return out


def compare(model: str, sizes: Sizes, warmup: int, repeats: int, log=print, only: set[str] | None = None,
            clock: str = "wall") -> list[Row]:
    """Every comparison for one model recipe (TRL sides only when trl imports)."""
    wl = workload(model)
    has_trl = trl_side.available() is not None
    rows: list[Row] = []

    def run(name: str, sides_: dict, reference: str) -> None:
        if only and name not in only:
            return
        log(f"[{model}] {name}: {', '.join(sides_)} ({warmup} warm-up, {repeats} repeats, alternating)")
        rows.extend(_rows(model, name, alternate(sides_, warmup, repeats, clock), reference))
        for r in rows[-len(sides_):]:
            log("  " + r.markdown())

    step = {"copd": sides.copd_grpo_step(wl, sizes), "copd_before": sides.without_lean(sides.copd_grpo_step(wl, sizes)),
            "hf_baseline": sides.hf_baseline_step(wl, sizes)}
    if has_trl:
        step["trl"] = trl_side.trl_grpo_step(wl, sizes)
    run("grpo_step", step, "copd")
    for n in (1, 2):
        plain = sides.phase2_rows(sizes, n) // sizes.group
        run(f"phase2_{n}t", {"plain_grpo_same": sides.copd_plain_same_step(wl, sizes, n),
                             f"phase2_{n}t": sides.copd_phase2_step(wl, sizes, n),
                             "plain_grpo": sides.copd_grpo_step(wl, sizes, prompts=plain),
                             "plain_grpo_same_before": sides.without_lean(sides.copd_plain_same_step(wl, sizes, n)),
                             f"phase2_{n}t_before": sides.without_lean(sides.copd_phase2_step(wl, sizes, n))},
            "plain_grpo_same")
    roll = {"copd": sides.copd_rollout(wl, sizes), "copd_before": sides.without_lean(sides.copd_rollout(wl, sizes))}
    if has_trl:
        roll["trl"] = trl_side.trl_rollout(wl, sizes)
    run("rollout", roll, "copd")
    return rows


def targets(rows: list[Row]) -> list[str]:
    """The issue's target ratios, stated the way the targets are; "before" = LeanDecoder off (the old path)."""
    out = []
    for model in dict.fromkeys(r.model for r in rows):
        t = {(r.comparison, r.side): r.median_s for r in rows if r.model == model}

        def ratio(comp: str, num: str, den: str) -> str:
            return f"{t[comp, num] / t[comp, den]:.2f}" if (comp, num) in t and (comp, den) in t else "n/a"

        if ("grpo_step", "trl") in t:
            out.append(f"{model}: copd steps/s ÷ TRL steps/s = {ratio('grpo_step', 'trl', 'copd')} "
                       f"(before: {ratio('grpo_step', 'trl', 'copd_before')}; target ≥ 2)")
        if ("grpo_step", "hf_baseline") in t:
            out.append(f"{model}: copd step time ÷ stock-transformers baseline = "
                       f"{ratio('grpo_step', 'copd', 'hf_baseline')} "
                       f"(before: {ratio('grpo_step', 'copd_before', 'hf_baseline')}; target ≤ 1.25)")
        for n in (1, 2):
            c = f"phase2_{n}t"
            if (c, c) in t:
                out.append(f"{model}: Phase II ({n} teacher{'s' * (n > 1)}) ÷ plain GRPO on the same prompts and rows = "
                           f"{ratio(c, c, 'plain_grpo_same')} (before: {ratio(c, c + '_before', 'plain_grpo_same_before')}; "
                           f"÷ plain GRPO on as many native rows: {ratio(c, c, 'plain_grpo')}"
                           + ("; target ≤ 1.3)" if n == 2 else ")"))
        if ("rollout", "trl") in t:
            out.append(f"{model}: copd rollout tokens/s ÷ TRL's = {ratio('rollout', 'trl', 'copd')} "
                       f"(before: {ratio('rollout', 'trl', 'copd_before')})")
    return out


def environment() -> str:
    """Machine, versions, threads and load, for the table's header."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    return (f"machine: {platform.machine()} {os.cpu_count()} cpus, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
            f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"transformers {transformers.__version__}, trl {trl_side.available() or 'not installed (TRL sides skipped)'}")

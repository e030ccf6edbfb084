"""How a step's rows are cut for the optimizer: mini-batches (one clipped optimizer update each) and, inside
one, micro-batches by a token budget (one forward+backward each, gradients accumulated).

Pure functions of row counts and lengths; no model, no autograd. Rows of one prompt (a GRPO group) stay
together where they can, so the training forward still runs each prompt once for its samples
(`trainer.rollout.prompt_runs`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def group_runs(prompt_index: Sequence[int]) -> list[Tensor]:
    """Row indices of each run of consecutive rows answering one prompt (a rollout's groups), in order."""
    runs: list[list[int]] = []
    for row, p in enumerate(prompt_index):
        if runs and prompt_index[runs[-1][0]] == p:
            runs[-1].append(row)
        else:
            runs.append([row])
    return [torch.tensor(r, dtype=torch.long) for r in runs]


def mini_batches(prompt_index: Sequence[int], m: int) -> list[Tensor]:
    """The rows of each of m mini-batches, as even as whole groups allow (contiguous, in order).

    With fewer groups than m, rows are split instead (a group's advantages are already normalised over the
    whole group, so its rows may land in different updates). Mini-batches may be empty only when there are
    fewer rows than m.
    """
    runs = group_runs(prompt_index)
    n = len(prompt_index)
    if m <= 1 or n == 0:
        return [torch.arange(n)]
    if len(runs) >= m:
        return [torch.cat(list(part)) for part in _split_even(runs, m)]
    return list(torch.tensor_split(torch.arange(n), m))


def _split_even(items: list, m: int) -> list[list]:
    """items in m contiguous parts whose sizes differ by at most one."""
    q, r = divmod(len(items), m)
    out, start = [], 0
    for i in range(m):
        end = start + q + (i < r)
        out.append(items[start:end])
        start = end
    return out


def cost(rows: Tensor, prompt_len: Tensor, completion_len: Tensor, run_of: Tensor) -> int:
    """Positions one forward over `rows` computes once trimmed: each prompt once (at the longest prompt's
    width) plus every row's completion at the longest completion's width."""
    if rows.numel() == 0:
        return 0
    prompts = int(torch.unique(run_of[rows]).numel())
    return prompts * int(prompt_len[rows].max()) + rows.numel() * int(completion_len[rows].max())


def micro_batches(rows: Tensor, prompt_len: Tensor, completion_len: Tensor, run_of: Tensor,
                  budget: int | None) -> list[Tensor]:
    """`rows` cut into micro-batches of at most `budget` positions each (`cost`), by length.

    prompt_len, completion_len, run_of: [N] per row of the whole batch (real prompt tokens, real completion
    tokens up to and including EOS, and which prompt run the row belongs to). All of `rows` in one piece, in
    order, when they fit (or budget is None). Otherwise runs (groups) go longest completion first into the
    current micro-batch while it stays within the budget, so long and short completions do not pad each
    other; a run that alone exceeds the budget is cut into pieces of rows of similar length. A single row
    longer than the budget is a micro-batch of its own.
    """
    if budget is None or rows.numel() == 0 or cost(rows, prompt_len, completion_len, run_of) <= budget:
        return [rows]
    units: list[Tensor] = []
    for run in torch.unique_consecutive(run_of[rows]).tolist():
        units.append(rows[run_of[rows] == run])
    units.sort(key=lambda u: -int(completion_len[u].max()))
    out: list[Tensor] = []
    current = rows.new_empty(0)
    for unit in units:
        if cost(unit, prompt_len, completion_len, run_of) > budget:
            for piece in _pieces(unit, prompt_len, completion_len, run_of, budget):
                out.append(piece)
            continue
        joined = torch.cat([current, unit])
        if cost(joined, prompt_len, completion_len, run_of) <= budget:
            current = joined
        else:
            out.append(current)
            current = unit
    if current.numel():
        out.append(current)
    return [mb for mb in out if mb.numel()]


def _pieces(unit: Tensor, prompt_len: Tensor, completion_len: Tensor, run_of: Tensor, budget: int) -> list[Tensor]:
    """One run's rows, longest first, in pieces within the budget (a row alone may exceed it)."""
    order = unit[torch.argsort(completion_len[unit], descending=True, stable=True)]
    out, current = [], order[:0]
    for row in order.split(1):
        joined = torch.cat([current, row])
        if current.numel() and cost(joined, prompt_len, completion_len, run_of) > budget:
            out.append(torch.sort(current).values)
            current = row
        else:
            current = joined
    out.append(torch.sort(current).values)
    return out

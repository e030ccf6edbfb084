"""Evaluation: greedy held-out accuracy per domain, and the behavioural overlap between experts."""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import torch

from contract import metrics as M
from trainer.algos import topk_overlap, topk_overlap_of_indices
from trainer.domains.base import Domain
from trainer import rollout
from trainer.rollout import HFEngine, forward_logits, token_topk


class GreedyEval(NamedTuple):
    """A policy's greedy answers to the first n held-out prompts of a domain."""

    accuracy: float          # mean verifier score
    length: float            # mean response length, tokens
    texts: list[str]         # [n] the completions
    scores: list[float]      # [n] their verifier scores


def greedy_eval(engine: HFEngine, domain: Domain, n_prompts: int, max_new_tokens: int) -> GreedyEval:
    """Greedy answers, scores, accuracy and mean length on the first n held-out prompts (one batched rollout)."""
    samples = list(domain.eval[:n_prompts])
    roll = engine.sample([s.model_input for s in samples], 1, temperature=1.0, max_new_tokens=max_new_tokens, greedy=True)
    scores = [domain.score(t, s) for t, s in zip(roll.texts, samples)]
    return GreedyEval(sum(scores) / len(samples), float(roll.tokens.completion_mask.sum(1).float().mean()),
                      list(roll.texts), scores)


def accuracy(engine: HFEngine, domain: Domain, n_prompts: int, max_new_tokens: int) -> tuple[float, float]:
    """(greedy accuracy, mean response length in tokens) on the first n held-out prompts."""
    result = greedy_eval(engine, domain, n_prompts, max_new_tokens)
    return result.accuracy, result.length


@torch.no_grad()
def overlap_row(owner: str, engines: Mapping[str, HFEngine], domain: Domain, n_prompts: int, k: int,
                temperature: float, max_new_tokens: int) -> dict[str, float]:
    """Top-k and top-1 overlap of every other expert with `owner` on the states `owner` visits.

    The owner samples its own domain's held-out prompts; every expert's next-token distribution is then
    compared with the owner's at each of those positions (O_k = mean_t |TopK_i ∩ TopK_j| / k).
    """
    prompts = [s.model_input for s in domain.eval[:n_prompts]]
    roll = engines[owner].sample(prompts, 1, temperature=temperature, max_new_tokens=max_new_tokens)
    mask = roll.tokens.completion_mask
    large = roll.tokens.size * mask.shape[1] * _vocab(engines[owner].model) > rollout.LOGITS_BUDGET
    out: dict[str, float] = {}
    if large:  # top-k indices a chunk at a time: the [N, T, V] logits of every expert would not fit
        mine_k = token_topk(engines[owner].model, roll.tokens, k)            # [N, T, k], largest first
    else:
        mine = forward_logits(engines[owner].model, roll.tokens)
    for other, engine in engines.items():
        if other == owner:
            continue
        if large:
            theirs_k = token_topk(engine.model, roll.tokens, k)
            out[M.OVERLAP.key_for(other)] = float(topk_overlap_of_indices(mine_k, theirs_k, mask))
            out[M.OVERLAP_TOP1.key_for(other)] = float(topk_overlap_of_indices(mine_k[..., :1], theirs_k[..., :1], mask))
            continue
        theirs = forward_logits(engine.model, roll.tokens)
        out[M.OVERLAP.key_for(other)] = float(topk_overlap(mine, theirs, mask, k))
        out[M.OVERLAP_TOP1.key_for(other)] = float(topk_overlap(mine, theirs, mask, 1))
    return out


def _vocab(model) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return int(head.weight.shape[0]) if head is not None else int(getattr(model.config, "vocab_size", 0))


def mean_overlap(rows: Sequence[Mapping[str, float]], prefix: str = "overlap/") -> float:
    """Mean of every pairwise value with the given key prefix."""
    vals = [v for r in rows for k, v in r.items() if k.startswith(prefix)]
    return sum(vals) / len(vals) if vals else 1.0

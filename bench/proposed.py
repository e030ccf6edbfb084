"""The proposed one-forward Phase II update (docs/perf-proposed.patch), here so the bench can time it.

`trainer.update.update_step` runs one forward (and so one autograd graph) per batch: native, then every
cross batch. This version concatenates the rows of batches with close prompt widths (`width_groups`) into
one padded batch (prompts re-padded on the left, completions on the right; neither changes a real token's
logits: padded keys are masked and positions count real tokens only), runs ONE forward per group, and takes
each batch's loss on its own rows, so the losses, stats and gradient are the same up to float rounding.
The patch makes this `update_step` itself.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
from torch import Tensor

from trainer.algos import entropy_from_logits, masked_mean, policy_loss, token_logprobs
from trainer.rollout import Rollout, TokenBatch, forward_logits, width_groups
from trainer.spec import GrpoSpec
from trainer.update import CrossBatch, NativeBatch, kl_penalty


def concat_batches(batches: Sequence[TokenBatch]) -> TokenBatch:
    """All rows in one batch: prompts left-padded and completions right-padded to the widest (pads masked)."""
    p = max(b.prompt_ids.shape[1] for b in batches)
    t = max(b.completion_ids.shape[1] for b in batches)

    def left(x: Tensor) -> Tensor:
        return torch.nn.functional.pad(x, (p - x.shape[1], 0))

    def right(x: Tensor) -> Tensor:
        return torch.nn.functional.pad(x, (0, t - x.shape[1]))

    return TokenBatch(torch.cat([left(b.prompt_ids) for b in batches]), torch.cat([left(b.prompt_mask) for b in batches]),
                      torch.cat([right(b.completion_ids) for b in batches]),
                      torch.cat([right(b.completion_mask) for b in batches]))


def split_logits(model, rollouts: Sequence[Rollout]) -> list[Tensor]:
    """One forward per group of similar-width rollouts (`width_groups`); each rollout's logits [N_i, T_i, V]."""
    widths = [r.tokens.prompt_ids.shape[1] for r in rollouts]
    t_max = max(r.tokens.completion_ids.shape[1] for r in rollouts)
    out: list[Tensor | None] = [None] * len(rollouts)
    for group in width_groups(widths, [r.tokens.size for r in rollouts], extra=t_max):
        logits = forward_logits(model, concat_batches([rollouts[g].tokens for g in group]))  # [ΣN, T, V]
        row = 0
        for g in group:
            n, t = rollouts[g].tokens.completion_ids.shape
            out[g] = logits[row: row + n, :t]
            row += n
    return out


def _loss(logits: Tensor, rollout: Rollout, advantages: Tensor, grpo: GrpoSpec, ref_logp: Tensor | None = None):
    logp = token_logprobs(logits, rollout.tokens.completion_ids, grpo.temperature)    # [N, T]
    mask = rollout.tokens.completion_mask
    loss, stats = policy_loss(logp, rollout.logp, advantages, mask, grpo.eps_low, grpo.eps_high)
    kl = kl_penalty(logp, ref_logp, mask) if ref_logp is not None else None
    with torch.no_grad():
        ent = float(masked_mean(entropy_from_logits(logits.detach(), grpo.temperature), mask))
    return loss, stats, ent, kl


def update_step(model, optimizer, native: NativeBatch | None, cross: Sequence[CrossBatch], grpo: GrpoSpec,
                lr: float) -> dict[str, float]:
    """loss = L_grpo(native) + Σ_j w_j · L_opd(cross_j) from ONE forward; one backward, clip, one optimizer step."""
    t0 = time.perf_counter()
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    optimizer.zero_grad(set_to_none=True)
    rollouts = ([native.rollout] if native is not None else []) + [cb.rollout for cb in cross]
    logits = split_logits(model, rollouts) if rollouts else []
    out: dict[str, float] = {}
    total = torch.zeros(())
    tokens = 0
    if native is not None:
        loss, stats, ent, kl = _loss(logits.pop(0), native.rollout, native.advantages, grpo, native.ref_logp)
        total = total + loss
        if kl is not None:
            total = total + grpo.kl_coef * kl
            out["grpo/kl_ref"] = float(kl.detach())
        tokens += native.rollout.completion_tokens
        out |= {"loss/grpo": float(loss.detach()), "grpo/clip_frac": stats.clip_frac, "entropy": ent,
                "reward/mean": float(native.rewards.mean()),
                "grpo/zero_adv_groups": float((native.advantages.view(-1, grpo.group_size).abs().sum(1) == 0).float().mean()),
                "response/len": float(native.rollout.tokens.completion_mask.sum(1).float().mean())}
    if cross:
        opd_loss, kl, adv = torch.zeros(()), 0.0, 0.0
        for cb, lg in zip(cross, logits):
            loss, stats, _, _ = _loss(lg, cb.rollout, cb.advantages, grpo)
            opd_loss = opd_loss + cb.weight * loss
            mask = cb.rollout.tokens.completion_mask
            teacher_kl = float(masked_mean(cb.rollout.logp - cb.teacher_logp, mask))
            kl += cb.weight * teacher_kl
            adv += cb.weight * float(masked_mean(cb.advantages, mask))
            tokens += cb.rollout.completion_tokens
            out[f"opd/kl/{cb.teacher}"] = teacher_kl
        total = total + opd_loss
        out |= {"loss/opd": float(opd_loss.detach()), "opd/kl": kl, "opd/adv": adv}
    total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grpo.grad_clip)
    optimizer.step()
    model.eval()
    dt = time.perf_counter() - t0
    out |= {"grad_norm": float(grad_norm), "lr": lr, "tokens/train_per_s": tokens / max(dt, 1e-9),
            "cost/train_tokens": float(tokens)}
    return out


def phase2_batches(engine, domain, prompts, teachers: dict, cross_prompts: dict, grpo: GrpoSpec, opd, beta: float,
                   weights: dict[str, float]) -> tuple[NativeBatch, list[CrossBatch]]:
    """A Phase II step's native and cross batches with ONE sampling call (`HFEngine.sample_many`)."""
    from trainer.algos import grpo_advantages, opd_advantages

    names = list(weights)
    rolls = engine.sample_many([([s.prompt for s in prompts], grpo.group_size)]
                               + [([s.prompt for s in cross_prompts[t]], opd.samples_per_prompt) for t in names],
                               temperature=grpo.temperature, max_new_tokens=grpo.max_new_tokens)
    roll = rolls[0]
    rewards = torch.tensor([domain.score(t, prompts[i]) for t, i in zip(roll.texts, roll.prompt_index)])
    native = NativeBatch(roll, rewards, grpo_advantages(rewards, grpo.group_size))
    cross = []
    for t, r in zip(names, rolls[1:]):
        t_logp = teachers[t].logprobs(r.tokens, temperature=grpo.temperature)
        cross.append(CrossBatch(t, r, t_logp, opd_advantages(t_logp, r.logp, r.tokens.completion_mask, beta), weights[t]))
    return native, cross

"""One expert's update: a native GRPO batch and (Phase II) cross-expert OPD batches in ONE optimizer step."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from trainer.algos import entropy_from_logits, grpo_advantages, masked_mean, opd_advantages, policy_loss, token_logprobs
from trainer.domains.base import Domain, Sample
from trainer.rollout import Rollout, RolloutEngine, forward_logits
from trainer.spec import GrpoSpec, OpdSpec


@dataclass(frozen=True)
class NativeBatch:
    """Own-domain rollouts with their rewards and group-normalised advantages."""

    rollout: Rollout
    rewards: Tensor           # [N]
    advantages: Tensor        # [N]
    ref_logp: Tensor | None = None  # [N, T] reference (base) model logprobs, only when grpo.kl_coef > 0


@dataclass(frozen=True)
class CrossBatch:
    """Teacher-domain prompts sampled by the student, scored token by token by a live teacher."""

    teacher: str
    rollout: Rollout
    teacher_logp: Tensor      # [N, T] log π_teacher of the student's tokens
    advantages: Tensor        # [N, T] β·(log π_teacher − log π_student)
    weight: float             # share of this teacher in the OPD loss


def native_batch(engine: RolloutEngine, domain: Domain, prompts: Sequence[Sample], grpo: GrpoSpec,
                 reference: RolloutEngine | None = None) -> NativeBatch:
    """Sample G completions per prompt, score them with the domain's verifier, GRPO advantages."""
    roll = engine.sample([s.prompt for s in prompts], grpo.group_size, temperature=grpo.temperature,
                         max_new_tokens=grpo.max_new_tokens)
    rewards = torch.tensor([domain.score(t, prompts[i]) for t, i in zip(roll.texts, roll.prompt_index)])
    ref = reference.logprobs(roll.tokens, temperature=grpo.temperature) if reference is not None else None
    return NativeBatch(roll, rewards, grpo_advantages(rewards, grpo.group_size), ref)


def pooled_batch(engine: RolloutEngine, items: Sequence[tuple[Domain, Sample]], grpo: GrpoSpec,
                 reference: RolloutEngine | None = None, alpha: float = 1.0) -> NativeBatch:
    """A native GRPO batch over several domains: each prompt scored by its own domain's verifier.

    Groups are per prompt, so the advantage normalisation never mixes domains; `alpha` scales the
    advantages (the clipped surrogate is linear in them, so this weights the GRPO loss by alpha).
    """
    roll = engine.sample([s.prompt for _, s in items], grpo.group_size, temperature=grpo.temperature,
                         max_new_tokens=grpo.max_new_tokens)
    rewards = torch.tensor([items[i][0].score(t, items[i][1]) for t, i in zip(roll.texts, roll.prompt_index)])
    ref = reference.logprobs(roll.tokens, temperature=grpo.temperature) if reference is not None else None
    return NativeBatch(roll, rewards, alpha * grpo_advantages(rewards, grpo.group_size), ref)


def kl_penalty(logp: Tensor, ref_logp: Tensor, mask: Tensor) -> Tensor:
    """k3 estimate of KL(π ‖ π_ref) per token, mean per sequence then over sequences. [N, T] → scalar."""
    d = ref_logp.detach() - logp
    return masked_mean(torch.exp(d) - d - 1.0, mask, dim=1).mean()


def cross_batch(engine: RolloutEngine, teacher_name: str, teacher: RolloutEngine, prompts: Sequence[Sample],
                grpo: GrpoSpec, opd: OpdSpec, beta: float, weight: float) -> CrossBatch:
    """Student samples the teacher's prompts; the live teacher scores every token (reverse-KL advantage)."""
    roll = engine.sample([s.prompt for s in prompts], opd.samples_per_prompt, temperature=grpo.temperature,
                         max_new_tokens=grpo.max_new_tokens)
    t_logp = teacher.logprobs(roll.tokens, temperature=grpo.temperature)
    adv = opd_advantages(t_logp, roll.logp, roll.tokens.completion_mask, beta)
    return CrossBatch(teacher_name, roll, t_logp, adv, weight)


def draw(rng: random.Random, samples: Sequence[Sample], n: int) -> list[Sample]:
    """n prompts without replacement (with replacement when the split is smaller than n)."""
    return rng.sample(list(samples), n) if n <= len(samples) else [rng.choice(samples) for _ in range(n)]


def _loss_on(model, rollout: Rollout, advantages: Tensor, grpo: GrpoSpec, ref_logp: Tensor | None = None):
    """Policy loss of the model on a rollout (old logprobs = the sampler's), its entropy, and the KL term."""
    logits = forward_logits(model, rollout.tokens)                                   # [N, T, V]
    logp = token_logprobs(logits, rollout.tokens.completion_ids, grpo.temperature)   # [N, T]
    mask = rollout.tokens.completion_mask
    loss, stats = policy_loss(logp, rollout.logp, advantages, mask, grpo.eps_low, grpo.eps_high)
    kl = kl_penalty(logp, ref_logp, mask) if ref_logp is not None else None
    with torch.no_grad():
        ent = float(masked_mean(entropy_from_logits(logits.detach(), grpo.temperature), mask))
    return loss, stats, ent, kl


def update_step(model, optimizer, native: NativeBatch | None, cross: Sequence[CrossBatch], grpo: GrpoSpec,
                lr: float) -> dict[str, float]:
    """loss = L_grpo(native) + Σ_j w_j · L_opd(cross_j); one backward, clip, one optimizer step."""
    t0 = time.perf_counter()
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    optimizer.zero_grad(set_to_none=True)
    out: dict[str, float] = {}
    total = torch.zeros(())
    tokens = 0
    if native is not None:
        loss, stats, ent, kl = _loss_on(model, native.rollout, native.advantages, grpo, native.ref_logp)
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
        for cb in cross:
            loss, stats, _, _ = _loss_on(model, cb.rollout, cb.advantages, grpo)
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

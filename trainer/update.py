"""One expert's update: a native GRPO batch and (Phase II) cross-expert OPD batches in ONE optimizer step."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from trainer.algos import grpo_advantages, logp_gap, masked_mean, opd_advantages, policy_loss, tis_weights
from trainer.domains.base import Domain, Sample
from trainer.domains.plugins import PLUGIN_ERRORS
from trainer.engines import autocast
from trainer.rollout import Rollout, RolloutEngine, token_stats
from contract.spec import GrpoSpec, OpdSpec


@dataclass(frozen=True)
class NativeBatch:
    """Own-domain rollouts with their rewards and group-normalised advantages."""

    rollout: Rollout
    rewards: Tensor           # [N]
    advantages: Tensor        # [N]
    ref_logp: Tensor | None = None  # [N, T] reference (base) model logprobs, only when grpo.kl_coef > 0
    parts: dict[str, tuple[float, int]] | None = None  # reward part → (sum, samples that have it): reward/<part>


def score_rollout(texts: Sequence[str], scored: Sequence[tuple[Domain, Sample]]
                  ) -> tuple[Tensor, dict[str, tuple[float, int]]]:
    """Rewards [N] of completions, each by its sample's domain (Domain.reward), and the sums of their parts."""
    rewards, parts = [], {}
    for text, (domain, sample) in zip(texts, scored):
        r, extra = domain.reward(text, sample)
        rewards.append(r)
        for k, v in extra.items():
            total, n = parts.get(k, (0.0, 0))
            parts[k] = (total + float(v), n + 1)
    return torch.tensor(rewards, dtype=torch.float32), parts


def reward_part_values(natives: Sequence["NativeBatch"]) -> dict[str, float]:
    """`reward/<part>` metrics of a step: each part's mean over the samples that have it; `plugin_errors`
    is a count (samples whose plugin raised)."""
    sums: dict[str, tuple[float, int]] = {}
    for nb in natives:
        for k, (total, n) in (nb.parts or {}).items():
            t0, n0 = sums.get(k, (0.0, 0))
            sums[k] = (t0 + total, n0 + n)
    return {f"reward/{k}": (total if k == PLUGIN_ERRORS else total / max(n, 1)) for k, (total, n) in sums.items()}


@dataclass(frozen=True)
class CrossBatch:
    """Teacher-domain prompts sampled by the student, scored token by token by a live teacher."""

    teacher: str
    rollout: Rollout
    teacher_logp: Tensor      # [N, T] log π_teacher of the student's tokens
    advantages: Tensor        # [N, T] β·(log π_teacher − log π_student), the sampler's log π_student
    weight: float             # share of this teacher in the OPD loss
    beta: float = 1.0         # β, to recompute the advantage with the trainer's log π_student (TIS)


def native_batch(engine: RolloutEngine, domain: Domain, prompts: Sequence[Sample], grpo: GrpoSpec,
                 reference: RolloutEngine | None = None) -> NativeBatch:
    """Sample G completions per prompt, score them with the domain's verifier, GRPO advantages."""
    roll = engine.sample([s.model_input for s in prompts], grpo.group_size, temperature=grpo.temperature,
                         max_new_tokens=grpo.max_new_tokens)
    rewards, parts = score_rollout(roll.texts, [(domain, prompts[i]) for i in roll.prompt_index])
    ref = reference.logprobs(roll.tokens, temperature=grpo.temperature) if reference is not None else None
    return NativeBatch(roll, rewards, grpo_advantages(rewards, grpo.group_size), ref, parts)


def pooled_batch(engine: RolloutEngine, items: Sequence[tuple[Domain, Sample]], grpo: GrpoSpec,
                 reference: RolloutEngine | None = None, alpha: float = 1.0) -> NativeBatch:
    """A native GRPO batch over several domains: each prompt scored by its own domain's verifier.

    Groups are per prompt, so the advantage normalisation never mixes domains; `alpha` scales the
    advantages (the clipped surrogate is linear in them, so this weights the GRPO loss by alpha).
    """
    roll = engine.sample([s.model_input for _, s in items], grpo.group_size, temperature=grpo.temperature,
                         max_new_tokens=grpo.max_new_tokens)
    rewards, parts = score_rollout(roll.texts, [items[i] for i in roll.prompt_index])
    ref = reference.logprobs(roll.tokens, temperature=grpo.temperature) if reference is not None else None
    return NativeBatch(roll, rewards, alpha * grpo_advantages(rewards, grpo.group_size), ref, parts)


def kl_penalty(logp: Tensor, ref_logp: Tensor, mask: Tensor) -> Tensor:
    """k3 estimate of KL(π ‖ π_ref) per token, mean per sequence then over sequences. [N, T] → scalar."""
    d = ref_logp.detach() - logp
    return masked_mean(torch.exp(d) - d - 1.0, mask, dim=1).mean()


def cross_batch(engine: RolloutEngine, teacher_name: str, teacher: RolloutEngine, prompts: Sequence[Sample],
                grpo: GrpoSpec, opd: OpdSpec, beta: float, weight: float) -> CrossBatch:
    """Student samples the teacher's prompts; the live teacher scores every token (reverse-KL advantage)."""
    roll = engine.sample([s.model_input for s in prompts], opd.samples_per_prompt, temperature=grpo.temperature,
                         max_new_tokens=grpo.max_new_tokens)
    t_logp = teacher.logprobs(roll.tokens, temperature=grpo.temperature)
    adv = opd_advantages(t_logp, roll.logp, roll.tokens.completion_mask, beta)
    return CrossBatch(teacher_name, roll, t_logp, adv, weight, beta)


def draw(rng: random.Random, samples: Sequence[Sample], n: int) -> list[Sample]:
    """n prompts without replacement (with replacement when the split is smaller than n)."""
    return rng.sample(list(samples), n) if n <= len(samples) else [rng.choice(samples) for _ in range(n)]


@dataclass
class _Loss:
    loss: Tensor
    clip_frac: float
    entropy: float
    kl_ref: Tensor | None
    old_logp: Tensor          # [N, T] the old policy's logprobs the loss used
    adv_mean: float           # mean advantage over unmasked tokens, as used (TIS weights included)
    logp_gap: float           # mean |log π_trainer − log π_sampler|
    tis_weight: float         # mean truncated IS weight (1.0 without the correction)


def _loss_on(model, rollout: Rollout, advantages: Tensor, grpo: GrpoSpec, *, ref_logp: Tensor | None = None,
             tis_cap: float | None = None, rescore: Callable[[Tensor], Tensor] | None = None,
             amp: torch.dtype | None = None) -> _Loss:
    """Policy loss of the model on a rollout, its entropy, the KL term and the sampler-vs-trainer gap.

    Old policy: with `tis_cap` the trainer's own logprobs (this forward, detached: one optimizer step per
    batch, so π_old is the current policy) and every token weighted by min(π_trainer/π_sampler, tis_cap);
    `rescore(old_logp)` recomputes token advantages that depend on the student's logprobs (OPD). Without
    `tis_cap`, the sampler's logprobs.
    """
    with autocast(model, amp):  # the [N, T, V] logits only where they are small (rollout.LOGITS_BUDGET)
        logp, ent_t = token_stats(model, rollout.tokens, grpo.temperature, entropy=True)  # [N, T], [N, T]
    mask = rollout.tokens.completion_mask
    sampler = rollout.logp.to(logp.device)
    adv, old, w = advantages.to(logp.device), sampler, None
    if tis_cap is not None:
        old = logp.detach()
        adv = rescore(old) if rescore is not None else adv
        w = tis_weights(old, sampler, mask, tis_cap)
        adv = (adv if adv.ndim == 2 else adv.unsqueeze(1)) * w                       # [N, T]
    loss, stats = policy_loss(logp, old, adv, mask, grpo.eps_low, grpo.eps_high)
    kl = kl_penalty(logp, ref_logp.to(logp.device), mask) if ref_logp is not None else None
    with torch.no_grad():
        ent = float(masked_mean(ent_t, mask))
    return _Loss(loss, stats.clip_frac, ent, kl, old, stats.adv_mean, float(logp_gap(logp, sampler, mask)),
                 float(masked_mean(w, mask)) if w is not None else 1.0)


def update_step(model, optimizer, native: NativeBatch | Sequence[NativeBatch] | None, cross: Sequence[CrossBatch],
                grpo: GrpoSpec, lr: float, *, tis_cap: float | None = None,
                amp: torch.dtype | None = None) -> dict[str, float]:
    """loss = L_grpo(native) + Σ_j w_j · L_opd(cross_j); one backward, clip, one optimizer step.

    native: one GRPO batch, or several parts of one (e.g. prompts of different lengths sampled apart), whose
    losses are weighted by their share of the rows so they sum to the pooled batch's per-sequence mean.
    tis_cap: truncated importance-sampling correction of the sampler/trainer mismatch (see `_loss_on`);
    amp: bf16 autocast of the forward when the master weights are fp32.
    """
    t0 = time.perf_counter()
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    optimizer.zero_grad(set_to_none=True)
    out: dict[str, float] = {}
    total = torch.zeros((), device=next(model.parameters()).device)
    tokens, gap, weight = 0, 0.0, 0.0
    natives = [native] if isinstance(native, NativeBatch) else list(native or [])
    if natives:
        rows = sum(nb.rollout.tokens.size for nb in natives)
        grpo_loss, kl_ref, clip, ent = torch.zeros((), device=total.device), None, 0.0, 0.0
        for nb in natives:
            share = nb.rollout.tokens.size / rows
            r = _loss_on(model, nb.rollout, nb.advantages, grpo, ref_logp=nb.ref_logp, tis_cap=tis_cap, amp=amp)
            grpo_loss = grpo_loss + share * r.loss
            if r.kl_ref is not None:
                kl_ref = share * r.kl_ref + (kl_ref if kl_ref is not None else 0.0)
            clip, ent = clip + share * r.clip_frac, ent + share * r.entropy
            n = nb.rollout.completion_tokens
            tokens, gap, weight = tokens + n, gap + r.logp_gap * n, weight + r.tis_weight * n
        total = total + grpo_loss
        if kl_ref is not None:
            total = total + grpo.kl_coef * kl_ref
            out["grpo/kl_ref"] = float(kl_ref.detach())
        zero = [float(g.abs().sum() == 0) for nb in natives
                for g in nb.advantages.split(nb.rollout.tokens.size // (max(nb.rollout.prompt_index) + 1))]
        out |= {"loss/grpo": float(grpo_loss.detach()), "grpo/clip_frac": clip, "entropy": ent,
                "reward/mean": float(torch.cat([nb.rewards for nb in natives]).float().mean()),
                "grpo/zero_adv_groups": sum(zero) / len(zero),
                "response/len": float(torch.cat([nb.rollout.tokens.completion_mask.sum(1) for nb in natives]).float().mean())}
        out |= reward_part_values(natives)
    if cross:
        opd_loss, kl, adv = torch.zeros((), device=total.device), 0.0, 0.0
        for cb in cross:
            mask = cb.rollout.tokens.completion_mask
            t_logp = cb.teacher_logp

            def rescore(old: Tensor, t_logp=t_logp, mask=mask, beta=cb.beta) -> Tensor:
                return opd_advantages(t_logp.to(old.device), old, mask.to(old.device), beta)

            r = _loss_on(model, cb.rollout, cb.advantages, grpo, tis_cap=tis_cap, rescore=rescore, amp=amp)
            opd_loss = opd_loss + cb.weight * r.loss
            teacher_kl = float(masked_mean(r.old_logp - t_logp.to(r.old_logp.device), mask.to(r.old_logp.device)))
            kl += cb.weight * teacher_kl
            adv += cb.weight * r.adv_mean
            n = cb.rollout.completion_tokens
            tokens, gap, weight = tokens + n, gap + r.logp_gap * n, weight + r.tis_weight * n
            out[f"opd/kl/{cb.teacher}"] = teacher_kl
        total = total + opd_loss
        out |= {"loss/opd": float(opd_loss.detach()), "opd/kl": kl, "opd/adv": adv}
    total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grpo.grad_clip)
    optimizer.step()
    model.eval()
    dt = time.perf_counter() - t0
    out |= {"grad_norm": float(grad_norm), "lr": lr, "tokens/train_per_s": tokens / max(dt, 1e-9),
            "cost/train_tokens": float(tokens), "rollout/logp_gap": gap / max(tokens, 1),
            "rollout/tis_weight": weight / max(tokens, 1)}
    return out

"""One expert's update: a native GRPO batch and (Phase II) cross-expert OPD batches in ONE optimizer step."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from trainer.algos import grpo_advantages, masked_mean, opd_advantages, policy_loss, tis_weights
from trainer.domains.base import Domain, Sample
from trainer.domains.plugins import PLUGIN_ERRORS
from trainer.engines import autocast
from trainer.microbatch import cost, group_runs, micro_batches, mini_batches
from trainer.rollout import Rollout, RolloutEngine, sharded, token_stats
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


@dataclass(frozen=True)
class _Part:
    """One batch in a step's loss: a native GRPO batch (weight = its share of the native rows) or a cross
    OPD batch (weight = its teacher's share)."""

    rollout: Rollout
    advantages: Tensor                 # [N] or [N, T]
    weight: float
    ref_logp: Tensor | None = None     # [N, T] KL reference (native, grpo.kl_coef > 0)
    teacher_logp: Tensor | None = None  # [N, T] cross: the advantage is recomputed from the old logprobs (TIS)
    beta: float = 1.0


@dataclass
class _Sums:
    """A part's loss and diagnostics summed over its micro-batches (token sums, so means come out exact)."""

    loss: float = 0.0        # Σ over mini-batches of the part's loss in that mini-batch
    kl_ref: float = 0.0
    tokens: int = 0
    clipped: float = 0.0     # Σ clip_frac × tokens
    entropy: float = 0.0
    adv: float = 0.0
    gap: float = 0.0
    tis: float = 0.0
    teacher_kl: float = 0.0  # Σ (log π_old − log π_teacher) over tokens


class _Lengths:
    """Per-row real prompt and completion lengths and prompt runs of a part, for the micro-batch plan."""

    def __init__(self, part: _Part):
        tok = part.rollout.tokens
        self.prompt = tok.prompt_mask.sum(1).cpu()
        self.completion = tok.completion_mask.sum(1).cpu()
        runs = group_runs(part.rollout.prompt_index)
        self.run_of = torch.empty(tok.size, dtype=torch.long)
        for i, r in enumerate(runs):
            self.run_of[r] = i

    def plan(self, rows: Tensor, budget: int | None) -> list[Tensor]:
        return micro_batches(rows, self.prompt, self.completion, self.run_of, budget)

    def cost(self, rows: Tensor) -> int:
        return cost(rows, self.prompt, self.completion, self.run_of)


def _micro(model, part: _Part, rows: Tensor, share: float, grpo: GrpoSpec, sums: _Sums, *,
           tis_cap: float | None, old_logp: Tensor | None, amp: torch.dtype | None, compiled: bool = False) -> Tensor:
    """The loss of rows of one part, scaled by `share` (their share of the part's rows in this mini-batch),
    on the batch trimmed to the columns the rows need; adds its diagnostics to `sums`.

    Old policy: with `tis_cap` the trainer's logprobs at the rollout policy (`old_logp` when given — later
    mini-batches —, else this forward, detached) and every token weighted by min(π_old/π_sampler, tis_cap);
    a cross part's token advantages are recomputed from them. Without `tis_cap`, the sampler's logprobs.
    """
    whole = rows.numel() == part.rollout.tokens.size and bool((rows == torch.arange(rows.numel())).all())
    tokens = part.rollout.tokens if whole else part.rollout.tokens.select(rows.to(part.rollout.tokens.prompt_ids.device))
    tokens = tokens.trimmed()
    w = tokens.completion_ids.shape[1]
    with autocast(model, amp):  # the [N, T, V] logits only where they are small (rollout.LOGITS_BUDGET)
        logp, ent_t = token_stats(model, tokens, grpo.temperature, entropy=True, compiled=compiled)  # [n, w] each
    dev = logp.device
    mask = tokens.completion_mask.to(dev)
    def pick(x: Tensor) -> Tensor:  # [N, T] → [n, w]
        return (x if whole else x[rows.to(x.device)])[:, :w].to(dev)

    sampler = pick(part.rollout.logp)
    adv = (part.advantages if whole else part.advantages[rows.to(part.advantages.device)]).to(dev)
    adv = adv[:, :w] if adv.ndim == 2 else adv
    old, tis_w, trainer_old = sampler, None, logp.detach()
    if tis_cap is not None:
        old = trainer_old = pick(old_logp) if old_logp is not None else logp.detach()
        if part.teacher_logp is not None:
            adv = opd_advantages(pick(part.teacher_logp), old, mask, part.beta)
        tis_w = tis_weights(old, sampler, mask, tis_cap)
        adv = (adv if adv.ndim == 2 else adv.unsqueeze(1)) * tis_w                    # [n, w]
    loss, stats = policy_loss(logp, old, adv, mask, grpo.eps_low, grpo.eps_high)
    loss = share * loss
    sums.loss += float(loss.detach())
    if part.ref_logp is not None:
        kl = share * kl_penalty(logp, pick(part.ref_logp), mask)
        sums.kl_ref += float(kl.detach())
        loss = loss + grpo.kl_coef * kl
    with torch.no_grad():
        n_tok = int(mask.sum())
        m = mask.to(logp.dtype)
        sums.tokens += n_tok
        sums.clipped += stats.clip_frac * n_tok
        sums.entropy += float((ent_t * m).sum())
        sums.adv += stats.adv_mean * n_tok
        sums.gap += float(((trainer_old - sampler).abs() * m).sum())
        sums.tis += float((tis_w * m).sum()) if tis_w is not None else float(n_tok)
        if part.teacher_logp is not None:
            sums.teacher_kl += float(((old - pick(part.teacher_logp)) * m).sum())
    return loss


@torch.no_grad()
def _old_logp(model, part: _Part, rows: Tensor, lengths: _Lengths, grpo: GrpoSpec,
              amp: torch.dtype | None, into: Tensor, budget: int | None) -> None:
    """The trainer's logprobs of `rows` at the current (rollout) policy, written into `into` [N, T]."""
    for mb in lengths.plan(rows, budget):
        tokens = part.rollout.tokens.select(mb.to(part.rollout.tokens.prompt_ids.device)).trimmed()
        w = tokens.completion_ids.shape[1]
        with autocast(model, amp):
            logp = token_stats(model, tokens, grpo.temperature)[0]
        into[mb.to(into.device), :w] = logp.to(into.device, into.dtype) * tokens.completion_mask.to(into.device)


def _parts(natives: Sequence[NativeBatch], cross: Sequence[CrossBatch]) -> list[_Part]:
    rows = sum(nb.rollout.tokens.size for nb in natives)
    out = [_Part(nb.rollout, nb.advantages, nb.rollout.tokens.size / rows, ref_logp=nb.ref_logp) for nb in natives]
    return out + [_Part(cb.rollout, cb.advantages, cb.weight, teacher_logp=cb.teacher_logp, beta=cb.beta) for cb in cross]


def update_step(model, optimizer, native: NativeBatch | Sequence[NativeBatch] | None, cross: Sequence[CrossBatch],
                grpo: GrpoSpec, lr: float, *, tis_cap: float | None = None,
                amp: torch.dtype | None = None, compiled: bool = False) -> dict[str, float]:
    """loss = L_grpo(native) + Σ_j w_j · L_opd(cross_j), over `grpo.mini_batches` clipped optimizer updates.

    native: one GRPO batch, or several parts of one (e.g. prompts of different lengths sampled apart), whose
    losses are weighted by their share of the rows so they sum to the pooled batch's per-sequence mean.
    Each mini-batch takes its share of every batch's rows (whole groups where they go evenly) and one
    optimizer step; inside one, rows go through the model in micro-batches of at most
    `grpo.micro_batch_tokens` positions, trimmed of padding, each backward accumulating into the gradient
    (the same gradient as one backward of the whole loss). With one mini-batch the old policy is the current
    one (ratio 1, nothing clipped); with more, every update's old policy is the rollout's.
    tis_cap: truncated importance-sampling correction of the sampler/trainer mismatch (see `_micro`);
    amp: bf16 autocast of the forward when the master weights are fp32; compiled: the training forward
    through `torch.compile` (spec `compute.compile`).
    """
    t0 = time.perf_counter()
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    natives = [native] if isinstance(native, NativeBatch) else list(native or [])
    parts = _parts(natives, cross)
    lengths = [_Lengths(p) for p in parts]
    m = grpo.mini_batches
    splits = [mini_batches(p.rollout.prompt_index, m) for p in parts]              # [part][mini-batch] → rows
    # FSDP ranks must run as many forwards and backwards as each other (each one gathers and reduces across
    # ranks), and their rows differ: a sharded expert takes each part of a mini-batch whole.
    budget = None if sharded(model) else grpo.micro_batch_tokens
    olds: list[Tensor | None] = [None] * len(parts)
    if m > 1 and tis_cap is not None:  # the rollout policy's logprobs, before the first update moves it
        for i, p in enumerate(parts):
            olds[i] = torch.zeros_like(p.rollout.logp, dtype=torch.float32)
            later = torch.cat(list(splits[i][1:])) if len(splits[i]) > 1 else torch.arange(0)
            if later.numel():
                _old_logp(model, p, later, lengths[i], grpo, amp, olds[i], budget)
    sums = [_Sums() for _ in parts]
    norms: list[float] = []
    for k in range(m):
        optimizer.zero_grad(set_to_none=True)
        pending, held, stepped = [], 0, False   # losses whose activations are alive, and their positions
        for i, p in enumerate(parts):
            rows = splits[i][k] if k < len(splits[i]) else torch.arange(0)
            if not rows.numel():
                continue
            for mb in lengths[i].plan(rows, budget):
                size = lengths[i].cost(mb)
                if pending and budget is not None and held + size > budget:
                    sum(pending).backward()   # gradient accumulation: at most `budget` positions held at once
                    pending, held = [], 0
                pending.append(_micro(model, p, mb, p.weight * mb.numel() / rows.numel(), grpo, sums[i],
                                      tis_cap=tis_cap, old_logp=olds[i] if k > 0 else None, amp=amp,
                                      compiled=compiled))
                held += size
        if pending:
            sum(pending).backward()
            stepped = True
        if stepped:
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), grpo.grad_clip)))
            optimizer.step()
    model.eval()
    dt = time.perf_counter() - t0
    return _report(natives, cross, parts, sums, norms, m, grpo, lr, dt)


def _report(natives, cross, parts: list[_Part], sums: list[_Sums], norms: list[float], m: int, grpo: GrpoSpec,
            lr: float, dt: float) -> dict[str, float]:
    """The step's metrics from the parts' sums; per-update values (losses, grad norm) averaged over updates."""
    out: dict[str, float] = {}
    tokens = sum(s.tokens for s in sums)
    per = lambda s, x: x / max(s.tokens, 1)  # noqa: E731  a token mean of one part
    nat = [(p, s) for p, s in zip(parts, sums) if p.teacher_logp is None]
    crs = [(p, s) for p, s in zip(parts, sums) if p.teacher_logp is not None]
    if nat:
        out |= {"loss/grpo": sum(s.loss for _, s in nat) / m,
                "grpo/clip_frac": sum(p.weight * per(s, s.clipped) for p, s in nat),
                "entropy": sum(p.weight * per(s, s.entropy) for p, s in nat),
                "reward/mean": float(torch.cat([nb.rewards for nb in natives]).float().mean()),
                "response/len": float(torch.cat([nb.rollout.tokens.completion_mask.sum(1) for nb in natives]).float().mean())}
        if any(p.ref_logp is not None for p, _ in nat):
            out["grpo/kl_ref"] = sum(s.kl_ref for _, s in nat) / m
        zero = [float(g.abs().sum() == 0) for nb in natives
                for g in nb.advantages.split(nb.rollout.tokens.size // (max(nb.rollout.prompt_index) + 1))]
        out["grpo/zero_adv_groups"] = sum(zero) / len(zero)
        out |= reward_part_values(natives)
    if crs:
        for (p, s), cb in zip(crs, cross):
            out[f"opd/kl/{cb.teacher}"] = per(s, s.teacher_kl)
        out |= {"loss/opd": sum(s.loss for _, s in crs) / m,
                "opd/kl": sum(p.weight * per(s, s.teacher_kl) for p, s in crs),
                "opd/adv": sum(p.weight * per(s, s.adv) for p, s in crs),
                "opd/clip_frac": sum(p.weight * per(s, s.clipped) for p, s in crs)}
    out |= {"grad_norm": sum(norms) / max(len(norms), 1), "lr": lr, "tokens/train_per_s": tokens / max(dt, 1e-9),
            "cost/train_tokens": float(tokens), "rollout/logp_gap": sum(s.gap for s in sums) / max(tokens, 1),
            "rollout/tis_weight": sum(s.tis for s in sums) / max(tokens, 1)}
    return out

"""The math of CoPD as pure tensor functions: no state, no I/O.

Shapes: N = sequences (prompts × samples), T = completion tokens, V = vocabulary.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from contract.spec import MERGE_METHODS  # the names, defined once (the spec's merge.method)


class LossStats(dict):
    """Diagnostics of one policy-loss evaluation (floats, detached); keys also readable as attributes.

    clip_frac: share of unmasked tokens whose ratio was clipped; ratio_mean: mean importance ratio;
    adv_mean: mean advantage (all over unmasked tokens).
    """

    def __getattr__(self, name: str) -> float:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def grpo_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """Group-normalised advantages: (r − mean_group) / (std_group + eps); equal-reward groups get 0.

    rewards: [N] with N = prompts × group_size, each group consecutive. Returns [N].
    std is the unbiased sample std (as in the GRPO paper and TRL).
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a length divisible by group_size={group_size}")
    r = rewards.float().view(-1, group_size)                     # [P, G]
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    adv = (r - mean) / (std + eps)
    adv = torch.where(std > 0, adv, torch.zeros_like(adv))       # all-equal group carries no signal
    return adv.view(-1)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x over positions where mask is 1 (0 where a row has no unmasked position)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
) -> tuple[Tensor, LossStats]:
    """Token-level clipped surrogate with asymmetric clip, mean per sequence then over sequences.

    logp, old_logp, mask: [N, T]; advantages: [N] (one per sequence) or [N, T] (per token).
    Per token: −min(ratio·A, clip(ratio, 1−eps_low, 1+eps_high)·A), ratio = exp(logp − old_logp).
    Sequences with no unmasked token contribute 0 to the per-sequence mean.
    """
    adv = advantages.unsqueeze(1).expand_as(logp) if advantages.ndim == 1 else advantages  # [N, T]
    adv = adv.detach()
    ratio = torch.exp(logp - old_logp.detach())                  # [N, T]
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    per_token = -torch.minimum(ratio * adv, clipped * adv)       # [N, T]
    per_seq = masked_mean(per_token, mask, dim=1)                # [N]
    loss = per_seq.mean()
    with torch.no_grad():
        was_clipped = ((ratio * adv) > (clipped * adv)).float()  # min picked the clipped branch
        clip_frac = float(masked_mean(was_clipped, mask))
        stats = LossStats(clip_frac=clip_frac, clip_fraction=clip_frac,
                          ratio_mean=float(masked_mean(ratio, mask)), adv_mean=float(masked_mean(adv, mask)))
    return loss, stats


def opd_advantages(teacher_logp: Tensor, student_logp: Tensor, mask: Tensor, beta: float) -> Tensor:
    """Per-token OPD advantage β·(log π_teacher − log π_student) on unmasked tokens, 0 elsewhere.

    All inputs [N, T] (log-probabilities of the student's sampled tokens). Detached: no gradient.
    Its masked mean is −β × the sampled estimate of KL(π_student ‖ π_teacher).
    """
    diff = (teacher_logp - student_logp).detach()
    return torch.where(mask.bool(), beta * diff, torch.zeros_like(diff))


def tis_weights(trainer_logp: Tensor, sampler_logp: Tensor, mask: Tensor, cap: float = 2.0) -> Tensor:
    """Truncated importance weights min(π_trainer(y_t) / π_sampler(y_t), cap) on unmasked tokens, 1 elsewhere.

    All inputs [N, T]. Corrects for a rollout engine (vLLM, bf16 kernels) whose logprobs differ from the
    trainer's own forward: the loss is taken with the trainer's logprobs as the old policy and every token
    weighted by this (TIS, as in verl and TRL). Detached: no gradient.
    """
    w = torch.exp((trainer_logp - sampler_logp).detach()).clamp(max=cap)
    return torch.where(mask.bool(), w, torch.ones_like(w))


def logp_gap(trainer_logp: Tensor, sampler_logp: Tensor, mask: Tensor) -> Tensor:
    """Mean |log π_trainer − log π_sampler| over unmasked tokens ([N, T] each → 0-d): the engine mismatch."""
    return masked_mean((trainer_logp - sampler_logp).detach().abs(), mask)


def topk_overlap(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, k: int = 10) -> Tensor:
    """Mean over unmasked positions of |TopK(student) ∩ TopK(teacher)| / k (the paper's O_k).

    logits: [N, T, V]; mask: [N, T]. Returns a 0-d tensor in [0, 1]. k is capped at V.
    """
    k = min(k, student_logits.shape[-1])
    s_idx = student_logits.topk(k, dim=-1).indices               # [N, T, k]
    t_idx = teacher_logits.topk(k, dim=-1).indices               # [N, T, k]
    return topk_overlap_of_indices(s_idx, t_idx, mask)


def topk_overlap_of_indices(student_topk: Tensor, teacher_topk: Tensor, mask: Tensor) -> Tensor:
    """`topk_overlap` from the two top-k index sets, [N, T, k] each (k = their last size)."""
    k = student_topk.shape[-1]
    hits = (student_topk.unsqueeze(-1) == teacher_topk.unsqueeze(-2)).any(-1).sum(-1).float()  # [N, T]
    return masked_mean(hits / k, mask)


def merge_state_dicts(
    state_dicts: Sequence[Mapping[str, Tensor]],
    weights: Sequence[float] | None = None,
) -> dict[str, Tensor]:
    """Weighted parameter average of same-shaped state dicts (uniform when weights is None).

    Weights must be non-negative and sum to 1. Floating tensors are averaged in float32 and cast
    back; integer buffers are taken from the first state dict.
    """
    if not state_dicts:
        raise ValueError("merge_state_dicts needs at least one state dict")
    n = len(state_dicts)
    if weights is None:
        weights = [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"got {len(weights)} weights for {n} state dicts")
    if any(w < 0 for w in weights):
        raise ValueError(f"merge weights must be non-negative, got {weights}")
    if abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"merge weights must sum to 1, they sum to {sum(weights):g}")
    keys = list(state_dicts[0].keys())
    for i, sd in enumerate(state_dicts[1:], start=1):
        if set(sd.keys()) != set(keys):
            raise ValueError(f"state dict {i} has different parameter names than state dict 0")
    merged: dict[str, Tensor] = {}
    for key in keys:
        first = state_dicts[0][key]
        if not torch.is_floating_point(first):
            merged[key] = first.clone()
            continue
        acc = torch.zeros_like(first, dtype=torch.float32)
        for w, sd in zip(weights, state_dicts):
            if sd[key].shape != first.shape:
                raise ValueError(f"parameter {key}: shapes differ {tuple(sd[key].shape)} vs {tuple(first.shape)}")
            acc += w * sd[key].float()
        merged[key] = acc.to(first.dtype)
    return merged


def magnitude_mask(delta: Tensor, density: float) -> Tensor:
    """Keep the `density` share of entries largest in magnitude (TIES' trim): a bool mask shaped like `delta`.

    k = int(density · numel) entries are kept (PEFT's `magnitude_based_pruning`): those at or above the k-th
    largest magnitude (entries tied with it are all kept). k = 0 keeps nothing.
    """
    n = delta.numel()
    k = int(density * n)
    if k <= 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(delta, dtype=torch.bool)
    mags = delta.abs()
    threshold = mags.flatten().kthvalue(n - k + 1).values  # the k-th largest (kthvalue counts from the smallest)
    return mags >= threshold


def dare_mask(shape: torch.Size, density: float, generator: torch.Generator) -> Tensor:
    """DARE's drop: keep each entry with probability `density` (a bool mask of `shape`)."""
    return torch.rand(shape, generator=generator) < density


def elect_sign(deltas: Tensor, weights: Tensor, method: str = "total") -> Tensor:
    """TIES' elected sign per entry, ±1. deltas [K, ...], weights [K].

    total: the sign of the weighted sum Σ_k w_k·δ_k; frequency: the sign held by most experts (by weight).
    A tie (0) elects +1, as PEFT's `calculate_majority_sign_mask` does.
    """
    w = weights.view(-1, *([1] * (deltas.dim() - 1)))
    votes = (w * deltas).sum(0) if method == "total" else (w * deltas.sign()).sum(0)
    sign = votes.sign()
    sign[sign == 0] = 1
    return sign


def merge_deltas(deltas: Tensor, weights: Tensor, method: str, density: float = 1.0,
                 sign_method: str = "total", generator: torch.Generator | None = None,
                 keep: Tensor | None = None) -> Tensor:
    """One merged task vector from the experts' deltas from the base. deltas [K, ...] (float32), weights [K].

    - task_arithmetic: Σ_k w_k·δ_k
    - ties: trim each δ_k to its top-`density` magnitudes, elect a sign per entry, then the weighted mean
      of the kept entries that agree with it: Σ_k w_k·m_k·δ_k / Σ_k w_k·m_k (0 where none agrees). With equal
      weights this is PEFT's `disjoint_merge` (mean over the agreeing experts).
    - dare_linear: drop each entry with probability 1 − density, rescale the kept by 1/density, then
      task arithmetic; dare_ties: the same drop and rescale, then TIES' sign election and disjoint mean.

    `keep` [K, ...] (bool), when given, is the trim / drop mask instead of one computed here (a chunk of a
    tensor whose TIES thresholds were taken over the whole tensor).
    """
    if method == "task_arithmetic":
        return torch.einsum("k,k...->...", weights, deltas)
    if method in ("dare_linear", "dare_ties"):
        if keep is None:
            if generator is None:
                raise ValueError(f"{method} needs a generator (its drop is random)")
            keep = torch.stack([dare_mask(d.shape, density, generator) for d in deltas])
        deltas = deltas * keep / density
        if method == "dare_linear":
            return torch.einsum("k,k...->...", weights, deltas)
    elif method == "ties":
        deltas = deltas * (torch.stack([magnitude_mask(d, density) for d in deltas]) if keep is None else keep)
    else:
        raise ValueError(f"unknown merge method {method!r} (one of {', '.join(MERGE_METHODS[1:])})")
    sign = elect_sign(deltas, weights, sign_method)
    agree = (deltas.sign() == sign).float()             # [K, ...] zeros (trimmed / dropped) never agree
    w = weights.view(-1, *([1] * (deltas.dim() - 1))) * agree
    return (w * deltas).sum(0) / w.sum(0).clamp_min(torch.finfo(torch.float32).tiny)


MERGE_CHUNK = 1 << 22  # elements per slice of a large tensor merged at once (bounds the float32 temporaries)


def merge_tensor(tensors: Sequence[Tensor], weights: Sequence[float], method: str = "average",
                 base: Tensor | None = None, *, density: float = 1.0, scale: float = 1.0,
                 sign_method: str = "total", generator: torch.Generator | None = None,
                 chunk: int = MERGE_CHUNK) -> Tensor:
    """One parameter of the merged model from the experts' values of it (computed in float32, cast back).

    average: Σ_k w_k·θ_k. The other methods work on the deltas from the base: θ_base + scale·merge_deltas(...).
    Integer tensors (buffers) are taken from the first expert. Tensors over `chunk` elements are merged a
    slice at a time (TIES' trim threshold is still each expert's over the whole tensor), so the float32
    temporaries stay a few times `chunk` whatever the tensor's size.
    """
    first = tensors[0]
    if not torch.is_floating_point(first):
        return first.clone()
    for t in tensors[1:]:
        if t.shape != first.shape:
            raise ValueError(f"shapes differ {tuple(t.shape)} vs {tuple(first.shape)}")
    if method != "average":
        if base is None:
            raise ValueError(f"merge method {method} needs the base model's tensor")
        if base.shape != first.shape:
            raise ValueError(f"base shape {tuple(base.shape)} differs from the experts' {tuple(first.shape)}")
    w = torch.tensor([float(x) for x in weights], dtype=torch.float32)
    flats = [t.reshape(-1) for t in tensors]
    b = base.reshape(-1) if base is not None else None
    thresholds = None
    if method == "ties" and density < 1.0:
        thresholds = [_kth_magnitude(f, b, density) for f in flats]
    out = torch.empty(first.numel(), dtype=first.dtype)
    for lo in range(0, first.numel(), max(1, chunk)):
        hi = min(lo + chunk, first.numel())
        stacked = torch.stack([f[lo:hi].float() for f in flats])                     # [K, C]
        if method == "average":
            out[lo:hi] = torch.einsum("k,k...->...", w, stacked).to(first.dtype)
            continue
        bc = b[lo:hi].float()
        deltas = stacked - bc
        keep = None
        if thresholds is not None:
            keep = torch.stack([d.abs() >= th for d, th in zip(deltas, thresholds)])
        elif method == "ties":
            keep = torch.ones_like(deltas, dtype=torch.bool)
        merged = merge_deltas(deltas, w, method, density, sign_method, generator, keep=keep)
        out[lo:hi] = (bc + scale * merged).to(first.dtype)
    return out.view(first.shape)


def _kth_magnitude(expert: Tensor, base: Tensor, density: float) -> Tensor | float:
    """The k-th largest |θ − θ_base| of one expert over the whole tensor, k = int(density · numel) (inf: keep none)."""
    n = expert.numel()
    k = int(density * n)
    if k <= 0:
        return float("inf")
    return (expert.float() - base.float()).abs_().kthvalue(n - k + 1).values


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log π(tokens) under logits/temperature. logits [N, T, V], tokens [N, T] → [N, T]."""
    logits = logits.float() / temperature
    return torch.gather(logits.log_softmax(-1), -1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-position entropy of softmax(logits/temperature). [N, T, V] → [N, T]."""
    logp = (logits.float() / temperature).log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def _chunk_stats(hidden: Tensor, weight: Tensor, bias: Tensor | None, tokens: Tensor, temperature: float,
                 entropy: bool) -> tuple[Tensor, Tensor]:
    """log π(tokens) and (detached; empty when not asked) the entropy of one chunk. hidden [M, D] → [M], [M].

    log π = z_token − logsumexp(z): the backward keeps no [M, V] log-softmax; the entropy (no grad) is −Σ p·log p.
    """
    z = F.linear(hidden, weight, bias).float()                                      # [M, V]
    if temperature != 1.0:
        z = z / temperature
    lse = torch.logsumexp(z, -1)                                                    # [M]
    picked = torch.gather(z, -1, tokens.unsqueeze(-1)).squeeze(-1) - lse
    if not entropy:
        return picked, picked.new_empty(0)
    with torch.no_grad():
        logp = z.detach() - lse.detach().unsqueeze(-1)                              # [M, V]
        return picked, -(logp.exp().unsqueeze(1) @ logp.unsqueeze(2)).view(-1)       # −Σ p·log p


def chunked_token_stats(hidden: Tensor, weight: Tensor, bias: Tensor | None, tokens: Tensor,
                        temperature: float = 1.0, chunk: int = 1024,
                        entropy: bool = False, recompute: bool = True) -> tuple[Tensor, Tensor | None]:
    """`token_logprobs` (and `entropy_from_logits`) of logits = hidden · weightᵀ + bias, without the [N, T, V]
    tensor: positions go through the vocabulary projection `chunk` at a time, and under autograd each chunk
    is recomputed in the backward (only its hidden states are kept), so memory is [chunk, V], not [N·T, V].

    hidden [N, T, D], weight [V, D], bias [V] | None, tokens [N, T] → logp [N, T] (differentiable),
    entropy [N, T] (detached) or None. recompute=False keeps each chunk's logits for the backward instead
    (one chunk of all positions: the plain path, without the recompute's second projection).
    """
    n, t, d = hidden.shape
    flat, ids = hidden.reshape(n * t, d), tokens.reshape(n * t)
    grad = recompute and torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    logps, ents = [], []
    for s in range(0, n * t, chunk):
        args = (flat[s: s + chunk], weight, bias, ids[s: s + chunk], temperature, entropy)
        lp, ent = checkpoint(_chunk_stats, *args, use_reentrant=False) if grad else _chunk_stats(*args)
        logps.append(lp)
        ents.append(ent)
    logp = torch.cat(logps).view(n, t) if logps else hidden.new_zeros(n, t, dtype=torch.float32)
    if not entropy:
        return logp, None
    return logp, (torch.cat(ents).view(n, t) if ents else logp.detach().clone())

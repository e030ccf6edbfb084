"""The timed sides of each comparison, each a closure that runs one unit of work and returns tokens sampled.

copd sides call the trainer's own modules exactly as `trainer.units.run_train_unit` does (HFEngine,
`native_batch` / `cross_batch`, `update_step`, the units' AdamW); `hf_baseline` is a GRPO step written
directly against stock transformers.
"""

from __future__ import annotations

import itertools

import torch

from bench.common import NATIVE, TEACHER_DOMAINS, Sizes, Step, Workload
from trainer import rollout
from trainer.rollout import HFEngine, LeanDecoder, encode_prompts
from contract.spec import GrpoSpec, OpdSpec
from trainer.update import cross_batch, native_batch, update_step

LR = 1e-4
TIS_CAP = 2.0  # the spec default: the old logprobs come from the training forward itself, as in a run


def grpo_spec(sizes: Sizes, prompts: int | None = None) -> GrpoSpec:
    """The GRPO knobs every side uses (no KL, temperature 1)."""
    return GrpoSpec(group_size=sizes.group, prompts_per_step=prompts or sizes.prompts,
                    max_new_tokens=sizes.max_new_tokens, lr=LR, kl_coef=0.0)


def prompt_stream(wl: Workload, domain: str, per_step: int):
    """Consecutive slices of a domain's train split, the same sequence for every side."""
    samples = list(wl.domains[domain].train)
    for i in itertools.count():
        start = (i * per_step) % (len(samples) - per_step)
        yield samples[start: start + per_step]


def without_lean(step: Step) -> Step:
    """The same side as copd was before issue 9: `LeanDecoder` off (transformers forward and `generate`) and no
    prompt sharing in the training forward."""
    def run() -> int:
        LeanDecoder.enabled, rollout.SHARE_PROMPTS = False, False
        try:
            return step()
        finally:
            LeanDecoder.enabled, rollout.SHARE_PROMPTS = True, True
    return run


def _adamw(model) -> torch.optim.Optimizer:
    """AdamW as a training unit makes it (`trainer.steps.make_optimizer`: fused where torch has the kernel)."""
    from trainer.steps import make_optimizer

    return make_optimizer(model.parameters(), LR)


def copd_grpo_step(wl: Workload, sizes: Sizes, prompts: int | None = None) -> Step:
    """One copd GRPO step: sample, score, advantages, one update (Phase I, or Phase II without teachers)."""
    model, grpo = wl.model(), grpo_spec(sizes, prompts)
    engine, opt, domain = HFEngine(model, wl.tokenizer), _adamw(model), wl.domains[NATIVE]
    stream = prompt_stream(wl, NATIVE, grpo.prompts_per_step)

    def step() -> int:
        native = native_batch(engine, domain, next(stream), grpo)
        update_step(model, opt, native, [], grpo, LR, tis_cap=TIS_CAP)
        return native.rollout.completion_tokens
    return step


def copd_phase2_step(wl: Workload, sizes: Sizes, teachers: int) -> Step:
    """One CoPD Phase II step: the native batch plus one cross batch per live teacher, one update."""
    model, grpo = wl.model(), grpo_spec(sizes)
    opd = OpdSpec(prompts_per_step=sizes.opd_prompts, samples_per_prompt=sizes.opd_samples)
    engine, opt, domain = HFEngine(model, wl.tokenizer), _adamw(model), wl.domains[NATIVE]
    names = TEACHER_DOMAINS[:teachers]
    live = {t: HFEngine(_perturbed(wl.model(), i + 1), wl.tokenizer) for i, t in enumerate(names)}
    stream = prompt_stream(wl, NATIVE, sizes.prompts)
    cross_streams = {t: prompt_stream(wl, t, sizes.opd_prompts) for t in names}

    def step() -> int:
        native = native_batch(engine, domain, next(stream), grpo)
        cross = [cross_batch(engine, t, live[t], next(cross_streams[t]), grpo, opd, opd.beta, 1.0 / len(names))
                 for t in names]
        update_step(model, opt, native, cross, grpo, LR, tis_cap=TIS_CAP)
        return native.rollout.completion_tokens + sum(c.rollout.completion_tokens for c in cross)
    return step


def copd_plain_same_step(wl: Workload, sizes: Sizes, teachers: int) -> Step:
    """A plain GRPO step on the Phase II step's own prompts and sample counts, no teacher.

    The native prompts × group and, per teacher domain, its prompts × samples, each row rewarded by its
    domain's verifier and normalised within its prompt's group, in one update: the same decode loops,
    sampled rows and prompt tokens as `copd_phase2_step`, so the time ratio is the OPD work alone (teacher
    scoring, token advantages).
    """
    model, grpo = wl.model(), grpo_spec(sizes)
    cross_grpo = grpo.model_copy(update={"group_size": sizes.opd_samples, "prompts_per_step": sizes.opd_prompts})
    engine, opt = HFEngine(model, wl.tokenizer), _adamw(model)
    names = TEACHER_DOMAINS[:teachers]
    stream = prompt_stream(wl, NATIVE, sizes.prompts)
    cross_streams = {t: prompt_stream(wl, t, sizes.opd_prompts) for t in names}

    def step() -> int:
        parts = [native_batch(engine, wl.domains[NATIVE], next(stream), grpo)]
        parts += [native_batch(engine, wl.domains[t], next(cross_streams[t]), cross_grpo) for t in names]
        update_step(model, opt, parts, [], grpo, LR, tis_cap=TIS_CAP)
        return sum(p.rollout.completion_tokens for p in parts)
    return step


def phase2_rows(sizes: Sizes, teachers: int) -> int:
    """Sequences sampled by a Phase II step; a plain GRPO step with rows // group prompts samples as many."""
    return sizes.prompts * sizes.group + teachers * sizes.opd_prompts * sizes.opd_samples


def _perturbed(model, seed: int):
    """A teacher that differs from the student (so the OPD advantage is not identically 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return model


def hf_baseline_step(wl: Workload, sizes: Sizes) -> Step:
    """A stock-transformers GRPO step (called `floor` before issue 20, but it is a baseline, not a lower bound:
    it does TRL's FLOPs — every row's prompt again, padding included — with none of TRL's bookkeeping): one
    batched `generate` (KV cache), one forward/backward over prompt ‖ completion, one AdamW step."""
    model, tok = wl.model(), wl.tokenizer
    opt = _adamw(model)
    stream = prompt_stream(wl, NATIVE, sizes.prompts)

    def step() -> int:
        ids, mask = encode_prompts(tok, [s.prompt for s in next(stream)])
        ids, mask = ids.repeat_interleave(sizes.group, 0), mask.repeat_interleave(sizes.group, 0)
        with torch.no_grad():
            seq = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=sizes.max_new_tokens,
                                 do_sample=True, top_k=0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        p = ids.shape[1]
        attn = torch.cat([mask, torch.ones_like(seq[:, p:])], 1)
        model.train()
        logits = model(input_ids=seq, attention_mask=attn).logits[:, p - 1:-1]        # [N, T, V]
        logp = logits.log_softmax(-1).gather(-1, seq[:, p:, None]).squeeze(-1)        # [N, T]
        adv = torch.randn(seq.shape[0], 1)                                            # stands in for rewards
        loss = -(torch.exp(logp - logp.detach()) * adv).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.eval()
        return int((seq[:, p:] != tok.pad_token_id).sum())
    return step


floor_step = hf_baseline_step  # the old name


def copd_rollout(wl: Workload, sizes: Sizes) -> Step:
    """copd's HF engine sampling rollout_prompts × rollout_samples completions."""
    engine = HFEngine(wl.model(), wl.tokenizer)
    stream = prompt_stream(wl, NATIVE, sizes.rollout_prompts)

    def step() -> int:
        roll = engine.sample([s.prompt for s in next(stream)], sizes.rollout_samples, temperature=1.0,
                             max_new_tokens=sizes.max_new_tokens)
        return roll.completion_tokens
    return step

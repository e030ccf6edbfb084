"""TRL's GRPOTrainer as a bench side (trl is a bench-only extra; `available()` says whether it imports).

A TRL step here is what its Trainer loop does per optimizer step with steps_per_generation = 1 and
num_iterations = 1 (so no extra old-logprob forward, matching copd's use of the sampler's logprobs):
`_prepare_inputs` (generate, reward, advantages) → `training_step` (forward, loss, backward) → clip → AdamW.
The Trainer's logging and callbacks are left out, which can only flatter TRL.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch

from bench.common import NATIVE, Sizes, Step, Workload
from bench.sides import LR, prompt_stream


def available() -> str | None:
    """The trl version, or None when trl is not installed."""
    try:
        import trl
    except ImportError:
        return None
    return trl.__version__


def grpo_trainer(wl: Workload, sizes: Sizes, generation_rows: int | None = None):
    """A GRPOTrainer on a fresh copy of the workload's model: fp32, CPU, no vLLM, no KL, same clip range."""
    by_prompt = {s.prompt: s for s in wl.domains[NATIVE].train}
    dom = wl.domains[NATIVE]

    def reward(prompts, completions, **_: Any) -> list[float]:
        return [dom.score(c, by_prompt[p]) for p, c in zip(prompts, completions)]

    rows = generation_rows or sizes.prompts * sizes.group
    return make_trainer(wl.model(), wl.tokenizer, [s.prompt for s in wl.domains[NATIVE].train[:256]], reward, rows=rows,
                        group=sizes.group, max_new_tokens=sizes.max_new_tokens, lr=LR, on_cpu=True, scored=True)


# Every GRPOConfig setting that changes the work or the memory of a step, pinned (TRL 1.16.0's defaults differ
# for several: activation_checkpointing True, bf16 True, loss_type dapo, epsilon_high None), so the bench does
# not depend on `Trainer.train()` (which we never call) applying or skipping any of them.
PINNED = dict(
    bf16=False, fp16=False, use_vllm=False, activation_checkpointing=False, torch_compile=False,
    use_liger_kernel=False, cast_lm_head_to_fp32=False, optim="adamw_torch_fused", steps_per_generation=1,
    gradient_accumulation_steps=1, num_iterations=1, temperature=1.0, top_k=0, top_p=1.0, beta=0.0,
    epsilon=0.2, epsilon_high=0.28, importance_sampling_level="token", mask_truncated_completions=False,
    top_entropy_quantile=1.0, weight_decay=0.0, max_grad_norm=1.0, loss_type="grpo", scale_rewards="group",
    shuffle_dataset=False, disable_dropout=True, use_transformers_paged=False,
)


def make_trainer(model, tokenizer, prompts: list[str], reward, *, rows: int, group: int, max_new_tokens: int,
                 lr: float, on_cpu: bool, scored: bool = False):
    """A GRPOTrainer over `model` with the PINNED settings, `rows` completions (groups of `group`) per step.

    reward: `reward(prompts, completions) -> list[float]` when `scored`, else `score(completion, sample)`
    applied to each completion (the prompt's sample unused).
    """
    os.environ.setdefault("ACCELERATE_USE_CPU", "true" if on_cpu else "false")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    def by_completion(prompts, completions, **_: Any) -> list[float]:
        return [reward(c, None) for c in completions]

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="copd-bench-trl-"), use_cpu=on_cpu, per_device_train_batch_size=rows,
        num_generations=group, max_completion_length=max_new_tokens, learning_rate=lr, report_to=[],
        logging_steps=10**9, save_strategy="no", disable_tqdm=True, seed=0, **PINNED)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward if scored else by_completion], args=args,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]), processing_class=tokenizer)
    trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train's loop, which we step by hand
    assert not getattr(trainer.model, "is_gradient_checkpointing", False)
    return trainer


def step_fn(trainer, stream, group: int) -> Step:
    """One TRL optimizer step per call: generate, reward, advantages, forward/backward, clip, AdamW."""
    model, opt = trainer.model, trainer.optimizer

    def step() -> int:
        batch = [{"prompt": s.prompt} for s in next(stream) for _ in range(group)]
        model.train()
        trainer.training_step(model, batch, None)  # calls _prepare_inputs: generate, reward, advantages
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return int(trainer._buffered_inputs[0]["completion_mask"].sum())
    return step


def trl_grpo_step(wl: Workload, sizes: Sizes) -> Step:
    """One TRL GRPO step on the same prompts, group size and completion cap as copd's."""
    return step_fn(grpo_trainer(wl, sizes), prompt_stream(wl, NATIVE, sizes.prompts), sizes.group)


def trl_rollout(wl: Workload, sizes: Sizes) -> Step:
    """TRL's transformers generation path (`GRPOTrainer._generate`) on rollout_prompts × rollout_samples rows."""
    trainer = grpo_trainer(wl, sizes, sizes.rollout_prompts * sizes.rollout_samples)
    trainer.model.eval()
    stream = prompt_stream(wl, NATIVE, sizes.rollout_prompts)

    def step() -> int:
        prompts = [s.prompt for s in next(stream) for _ in range(sizes.rollout_samples)]
        with torch.no_grad():
            completion_ids = trainer._generate(prompts)[1]
        return sum(len(c) for c in completion_ids)
    return step

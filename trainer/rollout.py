"""Rollout engines: sample completions with per-token logprobs, and score given sequences.

`HFEngine` is the transformers implementation (batched `generate`, left padding, KV cache).
A vLLM engine comes later behind the same `RolloutEngine` interface.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, Sequence

import torch
from torch import Tensor

from trainer.algos import token_logprobs


@dataclass(frozen=True)
class TokenBatch:
    """Prompts (left padded) and completions (right padded) as token tensors."""

    prompt_ids: Tensor        # [N, P]
    prompt_mask: Tensor       # [N, P] 1 = real token
    completion_ids: Tensor    # [N, T]
    completion_mask: Tensor   # [N, T] 1 = generated token up to and including EOS

    @property
    def size(self) -> int:
        return int(self.prompt_ids.shape[0])

    def select(self, idx: Tensor) -> "TokenBatch":
        """Rows idx of every tensor."""
        return TokenBatch(self.prompt_ids[idx], self.prompt_mask[idx], self.completion_ids[idx], self.completion_mask[idx])


@dataclass(frozen=True)
class Rollout:
    """Sampled completions of a policy: tokens, the sampler's logprobs and the decoded texts."""

    tokens: TokenBatch
    logp: Tensor              # [N, T] sampler log π(y_t) at the sampling temperature
    texts: list[str]          # N decoded completions, special tokens removed
    prompt_index: list[int]   # N: which input prompt each row answers (rows of one prompt are consecutive)

    @property
    def completion_tokens(self) -> int:
        return int(self.tokens.completion_mask.sum())


class RolloutEngine(Protocol):
    """What the trainer needs from a generation backend."""

    def sample(self, prompts: Sequence[str], n: int, *, temperature: float, max_new_tokens: int,
               greedy: bool = False) -> Rollout:
        """n completions per prompt (rows of a prompt consecutive), with per-token logprobs."""
        ...

    def logprobs(self, batch: TokenBatch, *, temperature: float = 1.0) -> Tensor:
        """Per-token log π(completion_t | prompt, completion_<t) under this engine's policy: [N, T]."""
        ...


def position_ids_from_mask(mask: Tensor) -> Tensor:
    """Positions counted over real tokens only (left padding gets position 1, as transformers does)."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def encode_prompts(tokenizer, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Tokenise prompts with left padding; applies the chat template when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts]
        enc = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    else:
        enc = tokenizer(list(prompts), padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def completion_mask(completion_ids: Tensor, eos_id: int) -> Tensor:
    """1 up to and including the first EOS of each row (all ones for a row that never stops)."""
    is_eos = completion_ids == eos_id                               # [N, T]
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0      # strictly after the first EOS
    return (~after_eos).long()


def forward_logits(model, batch: TokenBatch) -> Tensor:
    """Logits that predict each completion token: [N, T, V] (one forward over prompt ‖ completion)."""
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    # generate() attends to every generated token, EOS padding included; do the same so logprobs match.
    attn = torch.cat([batch.prompt_mask, torch.ones_like(batch.completion_ids)], dim=1)
    out = model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn), use_cache=False)
    p, t = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
    return out.logits[:, p - 1: p + t - 1]


class HFEngine:
    """Rollouts with transformers `generate` on the model object itself (weights always in sync)."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], n: int, *, temperature: float, max_new_tokens: int,
               greedy: bool = False) -> Rollout:
        ids, mask = encode_prompts(self.tokenizer, prompts)
        ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)      # [N, P], N = len·n
        was_training = self.model.training
        self.model.eval()
        kwargs = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_id, pad_token_id=self.pad_id,
            return_dict_in_generate=True, output_logits=True, **kwargs)
        self.model.train(was_training)
        comp = out.sequences[:, ids.shape[1]:]                                      # [N, T]
        cmask = completion_mask(comp, self.eos_id)
        logits = torch.stack(out.logits, dim=1)                                     # [N, T, V] raw
        logp = token_logprobs(logits, comp, 1.0 if greedy else temperature) * cmask
        texts = self.tokenizer.batch_decode(comp * cmask + self.pad_id * (1 - cmask), skip_special_tokens=True)
        return Rollout(TokenBatch(ids, mask, comp, cmask), logp, texts,
                       [i for i in range(len(prompts)) for _ in range(n)])

    @torch.no_grad()
    def logprobs(self, batch: TokenBatch, *, temperature: float = 1.0) -> Tensor:
        return token_logprobs(forward_logits(self.model, batch), batch.completion_ids, temperature) * batch.completion_mask


def with_logp(rollout: Rollout, logp: Tensor) -> Rollout:
    """The same rollout with other per-token logprobs (e.g. recomputed by the trainer)."""
    return replace(rollout, logp=logp)

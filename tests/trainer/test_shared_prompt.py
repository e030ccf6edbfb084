"""The training forward runs each prompt once for its G samples: same logits and gradients as row by row."""

import torch

from trainer.algos import token_logprobs
from trainer.models import build_char_tokenizer, build_tiny_model
from trainer.rollout import HFEngine, LeanDecoder, TokenBatch, forward_logits, position_ids_from_mask, shared_prompt_rows
from trainer.spec import TinyModelSpec


def _setup():
    tok = build_char_tokenizer(set("0123456789+=abc"))
    model = build_tiny_model(TinyModelSpec(hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64), tok, 0)
    torch.manual_seed(0)
    roll = HFEngine(model, tok).sample(["1+2=", "33+4=", "a"], 4, temperature=1.0, max_new_tokens=8)
    return model, roll


def _row_by_row(model, b: TokenBatch) -> torch.Tensor:
    ids = torch.cat([b.prompt_ids, b.completion_ids], 1)
    attn = torch.cat([b.prompt_mask, torch.ones_like(b.completion_ids)], 1)
    p, t = b.prompt_ids.shape[1], b.completion_ids.shape[1]
    return LeanDecoder.of(model).forward(ids, attn, position_ids_from_mask(attn), logits_from=p - 1)[:, :t]


def test_shared_prompt_rows_detects_runs():
    _, roll = _setup()
    b = roll.tokens
    assert shared_prompt_rows(b) == 4                         # 3 prompts (of 3 different lengths) × 4 samples
    assert shared_prompt_rows(b.select(torch.tensor([0, 4, 8]))) == 1      # all different
    assert shared_prompt_rows(b.select(torch.tensor([0, 1, 4, 5, 8, 9]))) == 2
    assert shared_prompt_rows(b.select(torch.tensor([0, 1, 2, 4, 5]))) == 1  # runs of 3 then 2
    assert shared_prompt_rows(b.select(torch.tensor([0, 4, 5, 6]))) == 1     # first run shorter than the rest
    assert shared_prompt_rows(b.select(torch.tensor([0]))) == 1


def test_shared_forward_equals_row_by_row_logits_and_gradients():
    model, roll = _setup()
    b = roll.tokens

    def grads(fn):
        model.zero_grad()
        out = fn()
        (token_logprobs(out, b.completion_ids) * b.completion_mask).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    full, g_full = grads(lambda: _row_by_row(model, b))
    shared, g_shared = grads(lambda: forward_logits(model, b))  # takes the shared path (g = 4)
    assert (full - shared).abs().max() < 1e-5
    for k in g_full:
        assert torch.allclose(g_full[k], g_shared[k], atol=1e-5, rtol=1e-4), k
    # and the sampler's logprobs are what the trainer computes
    lp = token_logprobs(shared, b.completion_ids) * b.completion_mask
    assert (lp - roll.logp).abs().max() < 1e-5


def test_sampling_prefills_each_prompt_once_with_the_same_result():
    """n samples of a prompt (one prefill, keys/values copied) = the prompt repeated n times, token for token."""
    model, _ = _setup()
    from trainer.models import build_char_tokenizer

    engine = HFEngine(model, build_char_tokenizer(set("0123456789+=abc")))
    torch.manual_seed(7)
    shared = engine.sample(["1+2=", "33+4=", "a"], 4, temperature=1.0, max_new_tokens=8)
    torch.manual_seed(7)
    repeated = engine.sample([p for p in ["1+2=", "33+4=", "a"] for _ in range(4)], 1, temperature=1.0, max_new_tokens=8)
    assert torch.equal(shared.tokens.completion_ids, repeated.tokens.completion_ids)
    assert torch.equal(shared.tokens.prompt_ids, repeated.tokens.prompt_ids)
    assert (shared.logp - repeated.logp).abs().max() < 1e-6
    assert shared.texts == repeated.texts and shared.prompt_index == [0] * 4 + [1] * 4 + [2] * 4

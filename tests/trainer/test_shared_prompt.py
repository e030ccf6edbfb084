"""The training forward runs each prompt once for its G samples: same logits and gradients as row by row."""

import pytest
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


def _model(arch: str, tok, dtype=torch.float32):
    if arch == "gpt2":
        from transformers import AutoModelForCausalLM, GPT2Config

        cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(cfg).eval().to(dtype)
    spec = TinyModelSpec(arch=arch, hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64)
    return build_tiny_model(spec, tok, 0).to(dtype)


@pytest.mark.parametrize("arch, dtype", [("qwen2", torch.float32), ("llama", torch.float32), ("gpt2", torch.float32),
                                         ("qwen2", torch.bfloat16)])
def test_transformers_path_shares_prompts_through_the_kv_cache(arch, dtype):
    """Where the lean forward does not apply (bf16, other architectures, or switched off), the prompts run once
    and their KV cache, repeated, serves the G completions: same logits and gradients as the full forward."""
    from trainer.models import build_char_tokenizer

    tok = build_char_tokenizer(set("0123456789+=abc"))
    model = _model(arch, tok, dtype)
    LeanDecoder.enabled = False
    try:
        torch.manual_seed(0)
        roll = HFEngine(model, tok).sample(["1+2=", "33+4=", "a"], 4, temperature=1.0, max_new_tokens=8)
        b = roll.tokens
        assert shared_prompt_rows(b) == 4
        ids = torch.cat([b.prompt_ids, b.completion_ids], 1)
        attn = torch.cat([b.prompt_mask, torch.ones_like(b.completion_ids)], 1)
        p, t = b.prompt_ids.shape[1], b.completion_ids.shape[1]

        def grads(fn):
            model.zero_grad()
            out = fn()
            (token_logprobs(out, b.completion_ids) * b.completion_mask).sum().backward()
            return out.detach().float(), {n: q.grad.float().clone() for n, q in model.named_parameters()}

        full, g_full = grads(lambda: model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn),
                                           use_cache=False).logits[:, p - 1: p + t - 1])
        shared, g_shared = grads(lambda: forward_logits(model, b))
    finally:
        LeanDecoder.enabled = True
    exact = dtype == torch.float32
    assert (full - shared).abs().max() < (1e-5 if exact else 1e-2)
    scale = max(g.abs().max() for g in g_full.values())
    worst = max((g_full[k] - g_shared[k]).abs().max() for k in g_full)
    assert worst < (1e-5 if exact else 0.02) * scale, (worst, scale)  # bf16: accumulation order, ~1% of the largest
    lp = token_logprobs(shared, b.completion_ids) * b.completion_mask
    assert (lp - roll.logp.float()).abs().max() < (1e-5 if exact else 0.05)

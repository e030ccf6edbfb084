"""The math functions (advantages, losses, overlap, merge) against values computed by hand (written out in each test)."""


import math

import pytest
import torch

from trainer.algos import (grpo_advantages, logp_gap, merge_state_dicts, opd_advantages, policy_loss, tis_weights,
                           topk_overlap)


def test_grpo_advantages_two_groups_of_two():
    # group [1, 0]: mean 0.5, unbiased std sqrt(0.5) = 0.70711 → ±0.5/0.70711 = ±0.70711
    adv = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=2)
    assert adv.tolist() == pytest.approx([0.70711, -0.70711, -0.70711, 0.70711], abs=1e-4)


def test_grpo_advantages_one_right_of_four():
    # mean 0.25; var = (0.75² + 3·0.25²)/3 = 0.25, std 0.5 → (1.5, -0.5, -0.5, -0.5)
    adv = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), group_size=4, eps=0.0)
    assert adv.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5])


def test_grpo_advantages_accepts_a_list():
    assert grpo_advantages([1.0, 0.0], group_size=2).tolist() == pytest.approx([0.70711, -0.70711], abs=1e-4)


def test_grpo_advantages_equal_group_gets_zero():
    adv = grpo_advantages(torch.tensor([1.0, 1.0, 0.0, 0.0, 0.3, 0.3]), group_size=2)
    assert adv.tolist() == [0.0] * 6


def test_grpo_advantages_rejects_ragged():
    with pytest.raises(ValueError):
        grpo_advantages(torch.tensor([1.0, 0.0, 1.0]), group_size=2)


def _ratios(*r):
    return torch.log(torch.tensor([list(r)]))


def test_policy_loss_positive_advantage_clips_high():
    # ratio (1.5, 0.5), A = 1: token 1 → min(1.5, 1.28) = 1.28; token 2 → min(0.5, 0.8) = 0.5
    logp, old = _ratios(1.5, 0.5), torch.zeros(1, 2)
    loss, stats = policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2))
    assert loss.item() == pytest.approx(-(1.28 + 0.5) / 2)
    assert stats.clip_frac == pytest.approx(0.5) and stats["clip_frac"] == stats.clip_frac
    assert stats.ratio_mean == pytest.approx(1.0)


def test_policy_loss_negative_advantage_clips_low():
    # A = -1: token 1 → min(-1.5, -1.28) = -1.5; token 2 → min(-0.5, -0.8) = -0.8 (clipped)
    logp, old = _ratios(1.5, 0.5), torch.zeros(1, 2)
    loss, stats = policy_loss(logp, old, torch.tensor([-1.0]), torch.ones(1, 2))
    assert loss.item() == pytest.approx((1.5 + 0.8) / 2)
    assert stats.clip_frac == pytest.approx(0.5)


def test_policy_loss_mean_per_sequence_then_over_sequences():
    # seq A as above (loss −0.89); seq B: ratio 1 on its one unmasked token, A = 2 → −2.
    # Eq. 7: mean over each sequence's tokens, then over sequences: (−0.89 − 2)/2 = −1.445.
    logp = torch.cat([_ratios(1.5, 0.5), torch.tensor([[0.0, 99.0]])])
    loss, _ = policy_loss(logp, torch.zeros(2, 2), torch.tensor([1.0, 2.0]), torch.tensor([[1, 1], [1, 0]]))
    assert loss.item() == pytest.approx(-1.445)


def test_policy_loss_per_token_advantages_and_gradient():
    # ratio 1 everywhere, per-token A (1, −2): loss = −(1 − 2)/2 = 0.5; dL/dlogp_t = −A_t·ratio/2
    logp = torch.zeros(1, 2, requires_grad=True)
    loss, stats = policy_loss(logp, torch.zeros(1, 2), torch.tensor([[1.0, -2.0]]), torch.ones(1, 2))
    loss.backward()
    assert loss.item() == pytest.approx(0.5)
    assert logp.grad[0].tolist() == pytest.approx([-0.5, 1.0])
    assert stats.clip_frac == 0.0


def test_policy_loss_clipped_token_has_no_gradient():
    logp = _ratios(1.5, 1.0).requires_grad_(True)
    loss, _ = policy_loss(logp, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2))
    loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([0.0, -0.5])  # ratio 1.5 > 1.28 is clipped


def test_opd_advantages_masked_and_detached():
    teacher = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    student = torch.tensor([[-1.5, -1.0]], requires_grad=True)
    adv = opd_advantages(teacher, student, torch.tensor([[1, 0]]), beta=2.0)
    assert adv.tolist() == [[1.0, 0.0]]  # 2·(−1 − (−1.5)) = 1; masked → 0
    assert not adv.requires_grad


def test_topk_overlap_by_hand():
    # k=2, V=4. position 1: student top {0,1}, teacher top {3,2} → 0; position 2: teacher top {0,2} → 1/2
    student = torch.tensor([[[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0]]])
    teacher = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [4.0, 1.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert topk_overlap(student, teacher, mask, k=2).item() == pytest.approx(0.25)
    assert topk_overlap(student, student, mask, k=2).item() == pytest.approx(1.0)
    assert topk_overlap(student, teacher, mask, k=10).item() == pytest.approx(1.0)  # k capped at V


def test_merge_state_dicts_weighted_and_uniform():
    a = {"w": torch.zeros(2), "step": torch.tensor(3)}
    b = {"w": torch.full((2,), 4.0), "step": torch.tensor(7)}
    assert merge_state_dicts([a, b], [0.25, 0.75])["w"].tolist() == [3.0, 3.0]
    uniform = merge_state_dicts([a, b])
    assert uniform["w"].tolist() == [2.0, 2.0]
    assert uniform["step"].item() == 3  # integer buffers come from the first


@pytest.mark.parametrize("weights, msg", [([0.5, 0.6], "sum to 1"), ([-0.5, 1.5], "non-negative"), ([1.0], "2 state dicts")])
def test_merge_state_dicts_bad_weights(weights, msg):
    with pytest.raises(ValueError, match=msg):
        merge_state_dicts([{"w": torch.zeros(1)}, {"w": torch.ones(1)}], weights)


def test_merge_state_dicts_mismatched_keys():
    with pytest.raises(ValueError, match="different parameter names"):
        merge_state_dicts([{"w": torch.zeros(1)}, {"v": torch.ones(1)}])


def test_kl_penalty_k3_by_hand():
    from trainer.update import kl_penalty

    # d = ref − logp = ln 2 on token 1, 0 on token 2 (masked out on row 2): k3 = e^d − d − 1 = 1 − ln 2
    logp = torch.tensor([[0.0, -1.0], [0.0, 5.0]])
    ref = torch.tensor([[math.log(2.0), -1.0], [0.0, 0.0]])
    kl = kl_penalty(logp, ref, torch.tensor([[1, 0], [1, 0]]))
    assert kl.item() == pytest.approx((1 - math.log(2.0)) / 2)


def test_tis_weights_by_hand():
    # ratios e^{0.5}=1.6487 (kept), e^{1}=2.718 (capped at 2), e^{-1}=0.3679 (kept); masked token → 1
    trainer = torch.tensor([[0.5, 1.0], [-1.0, 3.0]])
    sampler = torch.zeros(2, 2)
    mask = torch.tensor([[1, 1], [1, 0]])
    w = tis_weights(trainer.requires_grad_(), sampler, mask, cap=2.0)
    assert torch.allclose(w, torch.tensor([[1.648721, 2.0], [0.367879, 1.0]]), atol=1e-6)
    assert not w.requires_grad


def test_tis_weighted_loss_equals_scaled_advantages():
    # with old = the trainer's own logp (ratio 1), weighting tokens by w is the same as advantages × w
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    w = torch.tensor([[0.5, 2.0]])
    loss, _ = policy_loss(logp, logp.detach(), torch.tensor([1.0]).unsqueeze(1) * w, torch.ones(1, 2))
    # −mean(w_t · ratio_t · A) with ratio 1 → −(0.5 + 2)/2 = −1.25; gradient −w_t/2 per token
    assert loss.item() == pytest.approx(-1.25)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.25, -1.0]]))


def test_logp_gap_by_hand():
    a = torch.tensor([[-1.0, -2.0, -3.0]])
    b = torch.tensor([[-1.5, -2.0, -9.0]])
    assert logp_gap(a, b, torch.tensor([[1, 1, 0]])).item() == pytest.approx(0.25)

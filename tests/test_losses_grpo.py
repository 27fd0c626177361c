"""GRPO pieces in dlgpr.losses: group advantages and the clipped surrogate with the k3 KL."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from dlgpr.losses import group_advantages, grpo_loss, zero_spread_share


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(rewards, group_size=4)
    std = math.sqrt(4 * 0.25 / 3)  # unbiased std of [1, 0, 0, 1]
    expected = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4)] * 1
    assert adv[:4].tolist() == pytest.approx([expected[0], expected[1], expected[1], expected[0]], rel=1e-6)
    assert adv[4:].tolist() == [0.0] * 4  # a group with equal rewards teaches nothing
    assert group_advantages(torch.tensor([3.0, 5.0]), group_size=1).tolist() == [0.0, 0.0]


def test_group_advantages_refuse_bad_rewards():
    with pytest.raises(FloatingPointError, match="sample"):
        group_advantages(torch.tensor([1.0, float("nan"), 0.0, 1.0]), group_size=2)
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.zeros(4), group_size=3)


def _example():
    ratio = torch.tensor([[1.5, 0.9], [0.5, 2.0]])
    logp = ratio.log()
    old = torch.zeros(2, 2)
    ref = logp + torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])  # ref - logp
    return logp, old, ref, torch.tensor([1.0, -1.0]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])


def test_grpo_loss_by_hand():
    logp, old, ref, adv, mask = _example()
    loss, stats = grpo_loss(logp, old, ref, adv, mask, epsilon=0.2, beta=0.1)
    kl = 2.0 - math.log(2.0) - 1.0  # k3 at ref - logp = ln 2
    # token terms: -min(1.5, 1.2) ; -min(.9, .9) + .1 kl ; -min(-.5, -.8) ; (masked)
    expected = (-1.2 + (-0.9 + 0.1 * kl) + 0.8) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["kl"].item() == pytest.approx(kl / 3, abs=1e-6)
    assert stats["clip_fraction"].item() == pytest.approx(2 / 3)  # (0,0) above 1+eps with A>0; (1,0) below 1-eps with A<0
    # the gradient flows only through unclipped tokens' ratios (and the KL)
    logp = logp.clone().requires_grad_(True)
    grpo_loss(logp, old, ref, adv, mask, epsilon=0.2, beta=0.0)[0].backward()
    assert logp.grad[0, 0] == 0 and logp.grad[1, 0] == 0 and logp.grad[1, 1] == 0
    assert logp.grad[0, 1].item() == pytest.approx(-0.9 / 3, abs=1e-6)  # d(-rho A)/dlogp = -rho A


def test_grpo_loss_needs_a_reference_when_kl_is_on():
    logp, old, _, adv, mask = _example()
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, old, None, adv, mask, beta=0.1)
    loss, stats = grpo_loss(logp, old, None, adv, mask, beta=0.0)
    assert stats["kl"].item() == 0.0 and torch.isfinite(loss)


def _trl_loss(logp, old, ref, adv, mask, epsilon, beta):
    """trl's own GRPOTrainer._compute_loss on these tensors (the model forward stubbed out)."""
    trainer_mod = pytest.importorskip("trl.trainer.grpo_trainer")
    ident = lambda x, **_: x  # noqa: E731
    fake = SimpleNamespace(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
        beta=beta, loss_type="bnpo", epsilon_low=epsilon, epsilon_high=epsilon, use_vllm=False,
        vllm_importance_sampling_correction=False, aux_loss_enabled=False, _entropy_bonus_enabled=False, current_gradient_accumulation_steps=1,
        model=SimpleNamespace(training=True), _metrics={"train": defaultdict(list)},
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None),
        accelerator=SimpleNamespace(gather=ident, reduce=ident, gather_for_metrics=ident, num_processes=1, sync_gradients=True),
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
    )
    b, t = logp.shape
    inputs = {"prompt_ids": torch.zeros(b, 1, dtype=torch.long), "prompt_mask": torch.ones(b, 1, dtype=torch.long),
              "completion_ids": torch.zeros(b, t, dtype=torch.long), "completion_mask": mask,
              "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref}
    return trainer_mod.GRPOTrainer._compute_loss(fake, None, inputs)


def test_grpo_loss_matches_trl_on_identical_tensors():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(6, 9, generator=g) * 3
    old = logp + 0.3 * torch.randn(6, 9, generator=g)  # ratios on both sides of the clip range
    ref = logp + 0.5 * torch.randn(6, 9, generator=g)
    adv = torch.randn(6, generator=g)
    mask = (torch.arange(9)[None, :] < torch.tensor([9, 7, 5, 9, 3, 8])[:, None]).float()
    for beta in (0.0, 0.04):
        ours, _ = grpo_loss(logp, old, ref, adv, mask, epsilon=0.2, beta=beta)
        theirs = _trl_loss(logp, old, ref, adv, mask, epsilon=0.2, beta=beta)
        assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)


def test_zero_spread_share_counts_the_groups_without_a_gradient():
    rewards = torch.tensor([0.1, 0.1, 0.1, -1.5, 0.2, 0.2, 0.3, 0.3, 0.3, 0.0, 0.0, 1e-3])
    assert zero_spread_share(rewards, 3).item() == pytest.approx(0.5)  # groups 1 and 3 of 4
    # exactly the groups whose advantages are all zero
    adv = group_advantages(rewards, 3).view(-1, 3)
    assert zero_spread_share(rewards, 3).item() == pytest.approx((adv.abs().amax(dim=1) == 0).float().mean().item())
    assert zero_spread_share(rewards, 1).item() == 1.0  # a group of one never has a spread
    with pytest.raises(ValueError, match="groups of 5"):
        zero_spread_share(rewards, 5)

"""GRPO-family math (advantages, clipped importance-ratio loss, k3 KL, token averaging) worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rayalign.objectives.policy import aggregate, clipped_policy_loss, group_advantages, k3_kl, rloo_advantages


def test_group_advantages_hand_worked():
    """Group rewards (1, 0, 0, 1): mean 0.5, centred (±0.5); unbiased std = √((4 · 0.25) / 3) = 0.577350
    → A = ±0.5 / 0.577350 = ±0.866025. Dr. GRPO (no std): ±0.5. A group with equal rewards gets 0."""
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
    a = group_advantages(r, eps=0.0)
    assert a[0].tolist() == pytest.approx([0.866025, -0.866025, -0.866025, 0.866025], abs=1e-6)
    assert group_advantages(r)[1].tolist() == [0.0] * 4  # eps keeps 0/0 away
    assert group_advantages(r, scale="none")[0].tolist() == [0.5, -0.5, -0.5, 0.5]


def test_rloo_advantages_hand_worked():
    """(1, 0, 0, 1): r_0 − mean(0, 0, 1) = 1 − 1/3 = 0.666667; r_1 − mean(1, 0, 1) = −0.666667."""
    a = rloo_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]], dtype=torch.float64))
    assert a[0].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3], abs=1e-9)
    with pytest.raises(ValueError, match="2 samples"):
        rloo_advantages(torch.ones(3, 1))


RATIOS = torch.tensor([[1.5, 1.0, 0.5]], dtype=torch.float64)  # πθ/π_old of 3 response tokens


def loss_for(advantage: float, **kw):
    old = torch.zeros(1, 3, dtype=torch.float64)
    return clipped_policy_loss(
        torch.log(RATIOS), old, torch.tensor([advantage], dtype=torch.float64), torch.ones(1, 3), **kw
    )


def test_clipped_loss_positive_advantage():
    """A = +1, ε = 0.2: token 1 min(1.5, 1.2) = 1.2 (clipped), token 2: 1.0, token 3 min(0.5, 0.8) = 0.5 (a
    positive advantage is not clipped from below). L = −(1.2 + 1.0 + 0.5)/3 = −0.9; clip fraction 1/3.
    DAPO clip-higher ε_high = 0.28: token 1 → 1.28, L = −(1.28 + 1.0 + 0.5)/3 = −0.926667."""
    loss, m = loss_for(1.0)
    assert float(loss) == pytest.approx(-0.9, abs=1e-9)
    assert float(m["clip_fraction"]) == pytest.approx(1 / 3)
    assert float(m["ratio_mean"]) == pytest.approx(1.0)
    loss, _ = loss_for(1.0, eps_high=0.28)
    assert float(loss) == pytest.approx(-0.926667, abs=1e-6)


def test_clipped_loss_negative_advantage():
    """A = −1: token 1 min(−1.5, −1.2) = −1.5 (unclipped), token 2: −1, token 3 min(−0.5, −0.8) = −0.8
    (clipped). L = (1.5 + 1.0 + 0.8)/3 = 1.1; clip fraction 1/3. The gradient flows only through the
    unclipped tokens: dL/d log π = −ρ·A/3 = (1.5/3, 1/3, 0)."""
    logps = torch.log(RATIOS).clone().requires_grad_(True)
    loss, m = clipped_policy_loss(
        logps, torch.zeros(1, 3, dtype=torch.float64), torch.tensor([-1.0], dtype=torch.float64), torch.ones(1, 3)
    )
    assert float(loss.detach()) == pytest.approx(1.1, abs=1e-9)
    assert float(m["clip_fraction"]) == pytest.approx(1 / 3)
    loss.backward()
    assert logps.grad[0].tolist() == pytest.approx([0.5, 1 / 3, 0.0], abs=1e-9)


def test_k3_kl_and_penalty_hand_worked():
    """log π = log 0.5, log π_ref = log 0.25: d = log 0.5 = −0.693147; k3 = e^d − d − 1 = 0.5 + 0.693147 − 1
    = 0.193147. With ρ = 1 and A = 0 the loss is only β_KL·k3 = 0.1 · 0.193147 = 0.0193147."""
    lp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    assert float(k3_kl(lp, ref)) == pytest.approx(0.193147, abs=1e-6)
    loss, m = clipped_policy_loss(lp, lp, torch.zeros(1), torch.ones(1, 1), kl_coef=0.1, ref_logps=ref)
    assert float(loss) == pytest.approx(0.0193147, abs=1e-6)
    assert float(m["kl"]) == pytest.approx(0.193147, abs=1e-6)
    with pytest.raises(ValueError, match="ref_logps"):
        clipped_policy_loss(lp, lp, torch.zeros(1), torch.ones(1, 1), kl_coef=0.1)


def test_token_aggregations_hand_worked():
    """Per-token values [[2, ·, ·], [1, 1, 1]] (first sequence 1 token long): per sequence (2 + 1)/2 = 1.5;
    token-level (2 + 3)/4 = 1.25; Dr. GRPO constant T = 3: 5/(2 · 3) = 0.833333."""
    values = torch.tensor([[2.0, 9.0, 9.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    assert float(aggregate(values, mask, "sequence")) == pytest.approx(1.5)
    assert float(aggregate(values, mask, "token")) == pytest.approx(1.25)
    assert float(aggregate(values, mask, "constant")) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(values, mask, "mean")  # type: ignore[arg-type]  # the bad value is the point

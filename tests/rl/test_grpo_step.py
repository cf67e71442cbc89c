"""One GRPO step worked by hand: rewards → group advantages → per-token ratios → clipped loss, through
the `grpo` objective the trainer runs (collation, prompt masking, per-token log-probs, loss units)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from rayalign.objectives import get_objective
from rayalign.objectives.policy import group_advantages


class FixedLogits(torch.nn.Module):
    """A two-token 'model' whose next-token distribution is (1/4, 3/4) at every position."""

    def __init__(self):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor([0.0, math.log(3.0)], dtype=torch.float64))

    def forward(self, input_ids, attention_mask=None, use_cache=False, logits_to_keep=0):
        n, t = input_ids.shape
        k = logits_to_keep or t
        return SimpleNamespace(logits=self.logits.expand(n, k, 2))


def rollout_rows() -> list[dict]:
    """Prompt [1]; response 1 = [1] scored 1.0, response 2 = [0, 1] scored 0.0 (one group, G = 2)."""
    adv = group_advantages(torch.tensor([[1.0, 0.0]], dtype=torch.float64))[0]
    return [
        {"prompt_ids": [1], "response_ids": [1], "advantage": float(adv[0])},
        {"prompt_ids": [1], "response_ids": [0, 1], "advantage": float(adv[1])},
    ]


def test_advantages_of_the_group():
    """Rewards (1, 0): mean 0.5, unbiased std √((0.25 + 0.25)/1) = 0.707107; A = ±0.5/(0.707107 + 1e-4)
    = ±0.707007 (the eps keeps an all-equal group at 0)."""
    rows = rollout_rows()
    assert [r["advantage"] for r in rows] == pytest.approx([0.707007, -0.707007], abs=1e-6)


def old_logps(batch: dict) -> torch.Tensor:
    """The sampling policy gave response 1's token p = 0.5 and response 2's tokens p = 0.2, 0.75.
    Positions (after the shift): row 1 scores position 0; row 2 positions 0 and 1."""
    old = torch.zeros(2, batch["input_ids"].shape[1] - 1, dtype=torch.float64)
    old[0, 0] = math.log(0.5)
    old[1, 0], old[1, 1] = math.log(0.2), math.log(0.75)
    return old


def test_one_step_clipped_loss_by_hand():
    """log π: token 1 → log 0.75, token 0 → log 0.25 (the prompt token is never scored).
    Ratios ρ: row 1: 0.75/0.5 = 1.5; row 2: 0.25/0.2 = 1.25, 0.75/0.75 = 1.
    ε = 0.2. Row 1 (A = +0.707007): −min(1.5A, 1.2A) = −0.848408 (clipped).
    Row 2 (A = −0.707007): −min(1.25A, 1.2A) = +0.883759 (unclipped), −min(1·A, 1·A) = +0.707007.
    Per-sequence means: −0.848408 and (0.883759 + 0.707007)/2 = 0.795383; GRPO's loss is their mean
    −0.026513, and the objective returns the SUM over its 2 sequences (−0.053025) with count 2, which the
    trainer divides by the step's global count. Clip fraction 1/3 (row 1's token), ratio mean 3.75/3.
    Token-level aggregation (DAPO): (−0.848408 + 0.883759 + 0.707007) / 3 tokens = 0.247453; sum 0.742358.
    Constant divisor (Dr. GRPO, max_tokens 2): 0.742358 / (2 sequences · 2) = 0.185590; the objective
    returns 0.742358 / 2 = 0.371179 with count 2 (sequences).
    """
    model = FixedLogits()
    obj = get_objective("grpo", eps_low=0.2, eps_high=0.2)
    batch = obj.collate(rollout_rows(), pad_id=0)
    assert batch["labels"].tolist() == [[-100, 1, -100], [-100, 0, 1]]  # prompt and padding masked
    batch["old_logps"] = old_logps(batch)
    loss_sum, m = obj.loss(model, batch)
    assert int(obj.count(batch)) == 2
    assert float(loss_sum.detach()) == pytest.approx(-0.053025, abs=1e-6)
    assert float(m["clip_fraction"]) / 2 == pytest.approx(1 / 3)
    assert float(m["ratio_mean"]) / 2 == pytest.approx(3.75 / 3)

    tok = get_objective("grpo", aggregation="token")
    tok_sum, _ = tok.loss(model, batch)
    assert int(tok.count(batch)) == 3
    assert float(tok_sum.detach()) == pytest.approx(0.742358, abs=1e-6)

    const = get_objective("grpo", aggregation="constant", constant=2.0)
    const_sum, _ = const.loss(model, batch)
    assert int(const.count(batch)) == 2
    assert float(const_sum.detach()) == pytest.approx(0.371179, abs=1e-6)
    assert float(const_sum.detach()) / 2 == pytest.approx(0.185590, abs=1e-6)


def test_single_update_ratio_is_one_and_gradient_follows_advantages():
    """Without old log-probs (μ = 1) ρ = 1: the loss is −mean of the sequence advantages = 0 here, and
    its gradient (sequence means, then the mean over 2 sequences) is, with p = (1/4, 3/4),
    ∇_logits log p(1) = (−1/4, 1/4) and ∇ log p(0) = (3/4, −3/4): row 1: −A/2 · (−1/4, 1/4) = (A/8, −A/8);
    row 2 (advantage −A, 2 tokens): A/4 · [(3/4, −3/4) + (−1/4, 1/4)] = (A/8, −A/8);
    total (A/4, −A/4) = (0.176752, −0.176752) with A = 0.707007."""
    model = FixedLogits()
    obj = get_objective("grpo")
    batch = obj.collate(rollout_rows(), pad_id=0)
    loss_sum, m = obj.loss(model, batch)
    (loss_sum / 2).backward()
    assert float(loss_sum.detach()) == pytest.approx(0.0, abs=1e-9)
    assert float(m["ratio_mean"]) / 2 == pytest.approx(1.0)
    assert model.logits.grad.tolist() == pytest.approx([0.176752, -0.176752], abs=1e-6)


def test_bad_aggregation_settings():
    with pytest.raises(ValueError, match="divisor"):
        get_objective("grpo", aggregation="constant")
    with pytest.raises(ValueError, match="aggregation"):
        get_objective("grpo", aggregation="mean")


def test_importance_correction_by_hand():
    """Behaviour log-probs from the engine: response 1's token p = 0.25, response 2's tokens 0.5, 0.75.
    One update (ρ = 1, per-token term −A), π = (1/4, 3/4): weights w = π/μ = 0.75/0.25 = 3 (row 1),
    0.25/0.5 = 0.5 and 0.75/0.75 = 1 (row 2).
    TIS, c = 2: row 1 −2A = −1.414014; row 2 (0.5 + 1)·A/2 = 0.530255; per-sequence mean −0.441879,
    the objective's sum over 2 sequences −0.883759; weight mean (2 + 0.5 + 1)/3, 1 of 3 tokens capped.
    MIS, c = 2: row 1's token is masked (w = 0): (0 + 0.530255)/2 = 0.265128, sum 0.530255.
    mismatch KL (k3 of d = log π − log μ): row 1 d = log 3: 3 − 1.098612 − 1 = 0.901388; row 2
    d = log 0.5: 0.5 + 0.693147 − 1 = 0.193147, and 0; mean over 3 tokens 0.364845."""
    model = FixedLogits()
    rows = rollout_rows()
    rows[0]["behav_logps"] = [math.log(0.25)]
    rows[1]["behav_logps"] = [math.log(0.5), math.log(0.75)]
    none = get_objective("grpo")
    batch = none.collate(rows, pad_id=0)
    # laid out like the scored positions: row 1 scores position 0 only
    expected = [math.log(0.25), 0.0, math.log(0.5), math.log(0.75)]
    assert batch["behav_logps"].flatten().tolist() == pytest.approx(expected)
    loss_sum, m = none.loss(model, batch)
    assert float(loss_sum.detach()) == pytest.approx(0.0, abs=1e-9)  # no correction: the loss is untouched
    assert float(m["mismatch_kl"]) / 2 == pytest.approx(0.364845, abs=1e-6)
    assert "is_weight_mean" not in m

    tis = get_objective("grpo", correction="tis", cap=2.0)
    loss_sum, m = tis.loss(model, batch)
    assert float(loss_sum.detach()) == pytest.approx(-0.883759, abs=1e-6)
    assert float(m["is_weight_mean"]) / 2 == pytest.approx(3.5 / 3)
    assert float(m["is_capped_fraction"]) / 2 == pytest.approx(1 / 3)

    mis = get_objective("grpo", correction="mis", cap=2.0)
    loss_sum, m = mis.loss(model, batch)
    assert float(loss_sum.detach()) == pytest.approx(0.530255, abs=1e-6)
    assert float(m["is_weight_mean"]) / 2 == pytest.approx(1.5 / 3)

    with pytest.raises(ValueError, match="correction"):
        get_objective("grpo", correction="clip")

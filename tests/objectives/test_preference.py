"""Every preference loss against values worked out by hand, and the gradient signs that define them.

Shared hand-worked setting (unless a test says otherwise): β = 0.1, log-ratios
h_w = log πθ(y_w)/πref(y_w) = 2.0 and h_l = −1.0 (policy −3.0 vs reference −5.0 for the chosen,
policy −7.0 vs reference −6.0 for the rejected), so r_w = β·h_w = 0.2 and r_l = −0.1.
Sigmoids used below: σ(0.2) = 0.549834, σ(−0.1) = 0.475021, σ(0.3) = 0.574443, σ(0.15) = 0.537430,
σ(0.1) = 0.524979, σ(1.5) = 0.817574; σ'(x) = σ(x)(1 − σ(x)).
"""

from __future__ import annotations

import math

import pytest
import torch
from pair_helpers import base_pair, close, grads, t

from rayalign.objectives.preference import (
    PREFERENCE_LOSSES,
    PairLogps,
    apo_down,
    apo_zero,
    apo_zero_unpaired,
    dpo,
    ipo,
    kl_estimate,
    kto,
    orpo,
    simpo,
)
from rayalign.objectives.reward import bradley_terry


def test_apo_zero_hand_worked():
    """L = (1 − σ(r_w)) + σ(r_l) = (1 − 0.549834) + 0.475021 = 0.925187.

    Metrics: rewards 0.2 / −0.1, margin 0.3, accuracy 1.
    """
    loss, m = apo_zero(base_pair(), beta=0.1)
    close(loss, 0.925187)
    close(m["rewards_chosen"], 0.2)
    close(m["rewards_rejected"], -0.1)
    close(m["margins"], 0.3)
    close(m["accuracy"], 1.0)


def test_apo_down_hand_worked_raw_log_ratios():
    """The paper's σ(r_w) − σ(r_w − r_l) = σ(0.2) − σ(0.3) = 0.549834 − 0.574443 = −0.024609, reported
    shifted by 1 to stay ≥ 0: L = σ(r_w) + 1 − σ(r_w − r_l) = 0.975391 (the gradient tests below are unchanged).

    Both terms use the raw log-ratios (r_w and r_w − r_l), as in the paper.
    """
    loss, _ = apo_down(base_pair(), beta=0.1)
    close(loss, -0.024609 + 1.0)


def test_dpo_hand_worked():
    """L = −log σ(r_w − r_l) = −log σ(0.3) = log(1 + e^−0.3) = log(1.740818) = 0.554355."""
    loss, m = dpo(base_pair(), beta=0.1)
    close(loss, 0.554355)
    close(m["margins"], 0.3)


def test_ipo_hand_worked():
    """Summed form: L = (h_w − h_l − 1/(2β))² = (2 − (−1) − 5)² = (−2)² = 4.0; rewards reported as β·h."""
    loss, m = ipo(base_pair(), beta=0.1, token_average=False)
    close(loss, 4.0)
    close(m["rewards_chosen"], 0.2)


def test_simpo_hand_worked_reference_free():
    """β = 2, γ = 0.5; chosen log π = −4 over 4 tokens (mean −1), rejected −6 over 3 (mean −2).

    L = −log σ(2·(−1) − 2·(−2) − 0.5) = −log σ(1.5) = log(1 + e^−1.5) = log(1.223130) = 0.201413.
    No reference log-probs are given: SimPO never reads them.
    """
    lp = PairLogps(chosen=t(-4.0), rejected=t(-6.0), chosen_tokens=torch.tensor([4]), rejected_tokens=torch.tensor([3]))
    loss, m = simpo(lp, beta=2.0, gamma=0.5)
    close(loss, 0.201413)
    close(m["rewards_chosen"], -2.0)
    close(m["rewards_rejected"], -4.0)


def test_orpo_hand_worked():
    """Chosen: 2 tokens, mean log-prob log 0.5 (P = 0.5, odds 1); rejected: 3 tokens, mean log 0.2 (odds 0.25).

    log odds ratio = log(1 / 0.25) = log 4 = 1.386294; −log σ(log 4) = log(1 + 1/4) = 0.223144.
    NLL = −log 0.5 = 0.693147. L = 0.693147 + 0.1 · 0.223144 = 0.715461.
    """
    lp = PairLogps(
        chosen=t(2 * math.log(0.5)),
        rejected=t(3 * math.log(0.2)),
        chosen_tokens=torch.tensor([2]),
        rejected_tokens=torch.tensor([3]),
    )
    loss, m = orpo(lp, beta=0.1)
    close(loss, 0.715461)
    close(m["log_odds_ratio"], math.log(4))
    close(m["nll"], 0.693147)


def test_kto_hand_worked_with_batch_kl():
    """z0 = max(0, mean(h_w, h_l)) = max(0, (2 − 1)/2) = 0.5.

    desirable: 1 − σ(0.1·(2 − 0.5)) = 1 − σ(0.15) = 0.462570
    undesirable: 1 − σ(0.1·(0.5 − (−1))) = 1 − σ(0.15) = 0.462570;  L = 0.925140.
    """
    lp = base_pair()
    assert float(kl_estimate(lp)) == pytest.approx(0.5)
    loss, m = kto(lp, beta=0.1)
    close(loss, 0.925140)
    close(m["kl"], 0.5)


def test_kto_hand_worked_given_kl_and_weights():
    """z0 = 1.0 given, λ_D = 1, λ_U = 2.

    desirable: 1 − σ(0.1·(2 − 1)) = 1 − σ(0.1) = 0.475021
    undesirable: 2 · (1 − σ(0.1·(1 − (−1)))) = 2 · (1 − σ(0.2)) = 2 · 0.450166 = 0.900332;  L = 1.375353.
    """
    loss, _ = kto(base_pair(), beta=0.1, undesirable_weight=2.0, kl=torch.tensor(1.0, dtype=torch.float64))
    close(loss, 1.375353)


def test_kto_kl_estimate_is_clamped_at_zero():
    """Log-ratios −2 and −1 average −1.5 < 0, so z0 = 0 (a KL is never negative)."""
    lp = PairLogps(chosen=t(-7.0), rejected=t(-7.0), ref_chosen=t(-5.0), ref_rejected=t(-6.0))
    assert float(kl_estimate(lp)) == 0.0


def test_apo_zero_unpaired_sums_to_paired_apo_zero():
    """Unpaired: desirable 1 − σ(0.2) = 0.450166, undesirable σ(−0.1) = 0.475021; per pair 0.925187 = APO-zero."""
    loss, _ = apo_zero_unpaired(base_pair(), beta=0.1)
    close(loss, 0.925187)
    close(loss, float(apo_zero(base_pair(), beta=0.1)[0][0]))


def test_bradley_terry_hand_worked():
    """r_w = 1.0, r_l = −0.5: L = −log σ(1.5) = 0.201413; accuracy 1."""
    loss, m = bradley_terry(t(1.0), t(-0.5))
    close(loss, 0.201413)
    close(m["accuracy"], 1.0)


def test_apo_zero_gradient_raises_chosen_lowers_rejected():
    """dL/d log π(y_w) = −β σ'(0.2) = −0.1 · 0.247517 = −0.0247517 < 0: gradient descent raises the chosen
    likelihood; dL/d log π(y_l) = β σ'(−0.1) = 0.1 · 0.249376 = 0.0249376 > 0: it lowers the rejected one."""
    g_c, g_r = grads(apo_zero, beta=0.1)
    assert g_c == pytest.approx(-0.0247517, abs=1e-6)
    assert g_r == pytest.approx(0.0249376, abs=1e-6)


def test_apo_down_gradient_lowers_chosen():
    """dL/d log π(y_w) = β (σ'(0.2) − σ'(0.3)) = 0.1 · (0.247517 − 0.244458) = 0.000306 > 0: descent LOWERS the
    chosen likelihood; dL/d log π(y_l) = β σ'(0.3) = 0.0244458 > 0: it lowers the rejected one faster."""
    g_c, g_r = grads(apo_down, beta=0.1)
    assert g_c == pytest.approx(0.000306, abs=1e-6)
    assert g_c > 0
    assert g_r == pytest.approx(0.0244458, abs=1e-6)
    assert g_r > g_c


@pytest.mark.parametrize("name", ["dpo", "ipo", "simpo", "orpo", "kto", "apo_zero_unpaired"])
def test_every_loss_prefers_chosen(name):
    """Descent on any loss widens the policy margin: dL/d log π(y_w) < dL/d log π(y_l)."""
    fn, _ = PREFERENCE_LOSSES[name]
    g_c, g_r = grads(fn)
    assert g_c < g_r


def test_reference_losses_need_reference_logps():
    lp = PairLogps(chosen=t(-1.0), rejected=t(-2.0))
    with pytest.raises(ValueError, match="reference"):
        dpo(lp)


def test_batch_shapes_are_per_example():
    lp = PairLogps(
        chosen=t(-3.0, -1.0),
        rejected=t(-7.0, -1.5),
        ref_chosen=t(-5.0, -1.0),
        ref_rejected=t(-6.0, -1.0),
        chosen_tokens=torch.tensor([4, 2]),
        rejected_tokens=torch.tensor([3, 2]),
    )
    for name, (fn, _) in PREFERENCE_LOSSES.items():
        loss, metrics = fn(lp)
        assert loss.shape == (2,), name
        assert all(v.shape == (2,) for v in metrics.values()), name

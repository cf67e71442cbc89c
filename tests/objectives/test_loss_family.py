"""The preference-loss family beyond APO/DPO/IPO/SimPO/ORPO/KTO: hand-worked values and TRL's formulas.

Hand-worked setting (as in test_preference.py): β = 0.1, h_w = 2.0 (policy −3 vs reference −5),
h_l = −1.0 (policy −7 vs reference −6), so r_w = 0.2, r_l = −0.1, βΔ = 0.3; |y_w| = 4, |y_l| = 3.
Values used: −log σ(0.3) = 0.554355, −log σ(−0.3) = 0.854355, −log σ(0.2) = 0.598139,
−log σ(−0.2) = 0.798139, −log σ(0.1) = 0.644397, e^−0.3 = 0.740818, σ(6) = 0.997527.

TRL comparison: TRL's DPOTrainer computes its losses inside the `_compute_loss` method of a built
trainer (model, accelerator, dataset), so it cannot be called on bare log-probs. `trl_loss` below
reproduces, line for line, the `loss_type` branches of `DPOTrainer._compute_loss` in trl 1.16
(trl/trainer/dpo_trainer.py, "for loss_type, loss_weight in zip(self.loss_types, ...)"), and
`test_trl_source_still_has_these_formulas` checks the installed TRL still contains those lines, so
a change on TRL's side fails here rather than going unnoticed.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from pair_helpers import base_pair, close, grads, t

from rayalign.objectives import OBJECTIVES, get_objective
from rayalign.objectives.pairs import MixtureObjective
from rayalign.objectives.preference import (
    PREFERENCE_LOSSES,
    PairLogps,
    aot,
    aot_unpaired,
    bco_pair,
    chosen_nll,
    discopop,
    dpo,
    exo_pair,
    hinge,
    ipo,
    nca_pair,
    robust,
    rpo,
    sigmoid_norm,
    sppo_hard,
    weighted_mixture,
)

NEW = [
    "hinge",
    "robust",
    "bco_pair",
    "nca_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "discopop",
    "exo_pair",
    "sigmoid_norm",
    "rpo",
]


def test_hinge_hand_worked():
    """L = max(0, 1 − βΔ) = 1 − 0.3 = 0.7; past a margin of 1/β = 10 nats it is 0."""
    close(hinge(base_pair())[0], 0.7)
    far = PairLogps(chosen=t(8.0), rejected=t(-6.0), ref_chosen=t(0.0), ref_rejected=t(0.0))
    close(hinge(far)[0], 0.0)


def test_conservative_dpo_hand_worked():
    """cDPO, ε = 0.1: L = 0.9·0.554355 + 0.1·0.854355 = 0.584355; ε = 0 is plain DPO (0.554355)."""
    close(dpo(base_pair(), label_smoothing=0.1)[0], 0.584355)
    close(dpo(base_pair(), label_smoothing=0.0)[0], 0.554355)


def test_robust_dpo_hand_worked():
    """ε = 0.1: L = (0.9·0.554355 − 0.1·0.854355) / 0.8 = (0.498920 − 0.085436) / 0.8 = 0.516855."""
    close(robust(base_pair(), label_smoothing=0.1)[0], 0.516855)
    with pytest.raises(ValueError, match="label_smoothing"):
        robust(base_pair(), label_smoothing=0.5)


def test_bco_pair_hand_worked():
    """L = −log σ(r_w) − log σ(−r_l) = −log σ(0.2) − log σ(0.1) = 0.598139 + 0.644397 = 1.242536."""
    close(bco_pair(base_pair())[0], 1.242536)


def test_nca_pair_hand_worked():
    """L = −log σ(0.2) − ½·log σ(−0.2) − ½·log σ(0.1) = 0.598139 + 0.399069 + 0.322198 = 1.319407."""
    close(nca_pair(base_pair())[0], 1.319407)


def test_sppo_hard_hand_worked():
    """1/(2β) = 5: L = (2 − 5)² + (−1 + 5)² = 9 + 16 = 25."""
    close(sppo_hard(base_pair())[0], 25.0)


def test_discopop_hand_worked():
    """z = 0.3, τ = 0.05: w = σ(6) = 0.997527; L = 0.002473·0.554355 + 0.997527·0.740818 = 0.740357."""
    close(discopop(base_pair(), tau=0.05)[0], 0.740357)


def test_exo_pair_hand_worked():
    """ε = 0.2, z = 0.3: q_w = σ(0.3) = 0.574443, q_l = 0.425557, log q_w = −0.554355, log q_l = −0.854355.
    L = 0.574443·(−0.554355 − log 0.8) + 0.425557·(−0.854355 − log 0.2)
      = 0.574443·(−0.331212) + 0.425557·(0.755083) = −0.190263 + 0.321332 = 0.131069."""
    close(exo_pair(base_pair(), epsilon=0.2)[0], 0.131069)
    with pytest.raises(ValueError, match="epsilon"):
        exo_pair(base_pair(), epsilon=0.0)


def test_sigmoid_norm_hand_worked():
    """Per-token log-ratios 2/4 = 0.5 and −1/3: L = −log σ(0.1·(0.5 + 1/3)) = −log σ(0.083333) = 0.652348."""
    loss, m = sigmoid_norm(base_pair())
    close(loss, 0.652348)
    close(m["rewards_chosen"], 0.05)


def test_ipo_token_averaged_is_the_default():
    """Per-token log-ratios 0.5 and −1/3: L = (0.5 + 1/3 − 5)² = (−4.166667)² = 17.361111."""
    close(ipo(base_pair())[0], 17.361111, tol=1e-5)
    close(ipo(base_pair(), token_average=True)[0], 17.361111, tol=1e-5)


def test_rpo_is_dpo_plus_weighted_chosen_nll():
    """Chosen NLL per token = 3/4 = 0.75. α = 1: L = 0.554355 + 0.75 = 1.304355; α = 0.5: 0.929355."""
    close(rpo(base_pair())[0], 1.304355)
    loss, m = rpo(base_pair(), alpha=0.5)
    close(loss, 0.929355)
    close(m["nll"], 0.75)
    close(chosen_nll(base_pair())[0], 0.75)


def test_aot_sorts_over_the_batch():
    """Two pairs. Policy margins m = (−3 − (−7), −1 − 0) = (4, −1); reference margins (−5 − (−6), −2 − (−2)) =
    (1, 0). Sorted: m = (−1, 4), m_ref = (0, 1) → deltas (−1, 3): L = (−log σ(−0.1), −log σ(0.3)) =
    (0.744397, 0.554355). Paired with their own reference they would give (4 − 1, −1 − 0) = (3, −1) instead.

    Unpaired: h_w = (2, 1), h_l = (−1, 2); sorted (1, 2) and (−1, 2) → deltas (2, 0):
    L = (−log σ(0.2), −log σ(0)) = (0.598139, 0.693147).
    """
    lp = PairLogps(chosen=t(-3.0, -1.0), rejected=t(-7.0, 0.0), ref_chosen=t(-5.0, -2.0), ref_rejected=t(-6.0, -2.0))
    loss, _ = aot(lp)
    assert loss.tolist() == pytest.approx([0.744397, 0.554355], abs=1e-6)
    loss, _ = aot_unpaired(lp)
    assert loss.tolist() == pytest.approx([0.598139, math.log(2)], abs=1e-6)


def test_weighted_mixture_and_objective():
    """0.8·DPO + 0.2·BCO-pair + 1.0·chosen NLL = 0.8·0.554355 + 0.2·1.242536 + 0.75 = 1.441991."""
    parts = [
        ("dpo", 0.8, dpo, {"beta": 0.1}),
        ("bco_pair", 0.2, bco_pair, {"beta": 0.1}),
        ("chosen_nll", 1.0, chosen_nll, {}),
    ]
    loss, m = weighted_mixture(base_pair(), parts)
    close(loss, 1.441991)
    close(m["loss_bco_pair"], 1.242536)
    close(m["margins"], 0.3)  # the first part's rewards
    obj = get_objective(
        "mixture",
        losses=[
            {"name": "dpo", "weight": 0.8, "beta": 0.1},
            {"name": "bco_pair", "weight": 0.2},
            {"name": "chosen_nll"},
        ],
    )
    assert isinstance(obj, MixtureObjective) and obj.needs_reference
    assert not get_objective("mixture", losses=[{"name": "simpo"}, {"name": "chosen_nll"}]).needs_reference
    from rayalign.config import ConfigError

    with pytest.raises(ConfigError, match="allowed: beta"):
        get_objective("mixture", losses=[{"name": "hinge", "gamma": 1.0}])
    with pytest.raises(ConfigError, match="unknown preference loss 'nope'"):
        get_objective("mixture", losses=[{"name": "nope"}])


def test_every_registered_loss_is_an_objective():
    assert set(PREFERENCE_LOSSES) <= set(OBJECTIVES)
    assert set(NEW) <= set(PREFERENCE_LOSSES)
    assert get_objective("robust", label_smoothing=0.2).params == {"label_smoothing": 0.2}


@pytest.mark.parametrize("name", [n for n in NEW if n not in ("aot", "aot_unpaired")] + ["chosen_nll"])
def test_new_losses_prefer_chosen(name):
    """Descent widens the policy margin: dL/d log π(y_w) ≤ dL/d log π(y_l) (chosen_nll: 0 on y_l)."""
    fn, _ = PREFERENCE_LOSSES[name]
    g_c, g_r = grads(fn)
    assert g_c < g_r


# ---- TRL's formulas (trl 1.16, DPOTrainer._compute_loss), on random log-probs ----------------------------


def trl_loss(
    loss_type: str,
    chosen_logps,
    rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    chosen_len,
    rejected_len,
    beta: float,
    label_smoothing: float = 0.0,
    discopop_tau: float = 0.05,
) -> torch.Tensor:
    """TRL's per-sequence loss for one loss_type (reverse-KL scores, no WPO weighting), as in its source."""
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    chosen_scores, rejected_scores = chosen_logratios, rejected_logratios
    delta_score = chosen_scores - rejected_scores
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * delta_score)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta_score)
    if loss_type == "ipo":
        ipo_delta = chosen_scores / chosen_len.clamp(min=1.0) - rejected_scores / rejected_len.clamp(min=1.0)
        return (ipo_delta - 1 / (2 * beta)) ** 2
    if loss_type == "exo_pair":
        epsilon = torch.tensor(label_smoothing, dtype=delta_score.dtype)
        qw, log_qw = torch.sigmoid(beta * delta_score), F.logsigmoid(beta * delta_score)
        ql, log_ql = torch.sigmoid(-beta * delta_score), F.logsigmoid(-beta * delta_score)
        return qw * (log_qw - torch.log1p(-epsilon)) + ql * (log_ql - torch.log(epsilon))
    if loss_type == "nca_pair":
        cr, rr = beta * chosen_logratios, beta * rejected_logratios
        return -F.logsigmoid(cr) - 0.5 * F.logsigmoid(-cr) - 0.5 * F.logsigmoid(-rr)
    if loss_type == "robust":
        clean = -(1 - label_smoothing) * F.logsigmoid(beta * delta_score)
        flipped = -label_smoothing * F.logsigmoid(-beta * delta_score)
        return (clean - flipped) / (1 - 2 * label_smoothing)
    if loss_type == "bco_pair":
        return -F.logsigmoid(beta * chosen_logratios) - F.logsigmoid(-beta * rejected_logratios)
    if loss_type == "sppo_hard":
        return (chosen_logratios - 0.5 / beta) ** 2 + (rejected_logratios + 0.5 / beta) ** 2
    if loss_type in ("aot", "aot_unpaired"):
        if loss_type == "aot":
            delta = (
                torch.sort(chosen_logps - rejected_logps, dim=0)[0]
                - torch.sort(ref_chosen_logps - ref_rejected_logps, dim=0)[0]
            )
        else:
            delta = torch.sort(chosen_logratios, dim=0)[0] - torch.sort(rejected_logratios, dim=0)[0]
        return -F.logsigmoid(beta * delta) * (1 - label_smoothing) - F.logsigmoid(-beta * delta) * label_smoothing
    if loss_type == "apo_zero":
        return (1 - torch.sigmoid(beta * chosen_logratios)) + torch.sigmoid(beta * rejected_logratios)
    if loss_type == "apo_down":
        return torch.sigmoid(beta * chosen_logratios) + (
            1 - torch.sigmoid(beta * (chosen_logratios - rejected_logratios))
        )
    if loss_type == "discopop":
        logits = delta_score * beta
        mod = torch.sigmoid(logits / discopop_tau)
        return -F.logsigmoid(logits) * (1 - mod) + torch.exp(-logits) * mod
    if loss_type == "sigmoid_norm":
        delta = chosen_scores / chosen_len.clamp(min=1.0) - rejected_scores / rejected_len.clamp(min=1.0)
        return -F.logsigmoid(beta * delta)
    raise KeyError(loss_type)


# our name, our params → TRL loss_type, TRL kwargs
CASES = [
    ("dpo", {"beta": 0.3}, "sigmoid", {}),
    ("hinge", {"beta": 0.3}, "hinge", {}),
    ("ipo", {"beta": 0.3}, "ipo", {}),
    ("exo_pair", {"beta": 0.3, "epsilon": 0.01}, "exo_pair", {"label_smoothing": 0.01}),
    ("nca_pair", {"beta": 0.3}, "nca_pair", {}),
    ("robust", {"beta": 0.3, "label_smoothing": 0.2}, "robust", {"label_smoothing": 0.2}),
    ("bco_pair", {"beta": 0.3}, "bco_pair", {}),
    ("sppo_hard", {"beta": 0.3}, "sppo_hard", {}),
    ("aot", {"beta": 0.3, "label_smoothing": 0.1}, "aot", {"label_smoothing": 0.1}),
    ("aot_unpaired", {"beta": 0.3}, "aot_unpaired", {}),
    ("apo_zero", {"beta": 0.3}, "apo_zero", {}),
    ("apo_down", {"beta": 0.3}, "apo_down", {}),
    ("discopop", {"beta": 0.3, "tau": 0.05}, "discopop", {"discopop_tau": 0.05}),
    ("sigmoid_norm", {"beta": 0.3}, "sigmoid_norm", {}),
]


def random_pairs(n: int = 16, seed: int = 0, equal_lengths: bool = False):
    g = torch.Generator().manual_seed(seed)
    logps = [-(torch.rand(n, generator=g, dtype=torch.float64) * 40 + 1) for _ in range(4)]
    lens = [torch.randint(1, 30, (n,), generator=g) for _ in range(2)]
    if equal_lengths:
        lens = [torch.full((n,), 7), lens[1]]
    return logps, lens


@pytest.mark.parametrize("ours,params,trl_type,trl_kw", CASES, ids=[c[0] for c in CASES])
def test_equals_trl_formula_on_random_logps(ours, params, trl_type, trl_kw):
    (c, r, rc, rr), (n_c, n_r) = random_pairs()
    fn, _ = PREFERENCE_LOSSES[ours]
    loss, _ = fn(PairLogps(c, r, rc, rr, n_c, n_r), **params)
    expected = trl_loss(trl_type, c, r, rc, rr, n_c.double(), n_r.double(), beta=params["beta"], **trl_kw)
    assert torch.allclose(loss, expected, atol=1e-6, rtol=0), (loss - expected).abs().max()
    assert abs(float(loss.mean()) - float(expected.mean())) <= 1e-6  # TRL reduces with .mean()


def test_rpo_and_mixture_equal_trl_weighted_loss_types():
    """TRL's RPO is loss_type=["sigmoid", "sft"] with weights [1, α]; its "sft" term is the token mean of
    the chosen log-probs over the batch, which equals the mean of per-sequence token means when every
    chosen answer has the same length (here 7 tokens). MPO: ["sigmoid", "bco_pair", "sft"] × [0.8, 0.2, 1]."""
    (c, r, rc, rr), (n_c, n_r) = random_pairs(equal_lengths=True)
    lp = PairLogps(c, r, rc, rr, n_c, n_r)
    g = torch.Generator().manual_seed(1)
    per_token = torch.rand(16, 7, generator=g, dtype=torch.float64)
    per_token = per_token / per_token.sum(1, keepdim=True) * c.unsqueeze(1)  # sums to the chosen log-probs
    trl_sft = -per_token.mean()
    beta, alpha = 0.1, 0.7
    trl_rpo = trl_loss("sigmoid", c, r, rc, rr, n_c, n_r, beta).mean() + alpha * trl_sft
    assert abs(float(rpo(lp, beta=beta, alpha=alpha)[0].mean()) - float(trl_rpo)) <= 1e-6
    trl_mpo = (
        0.8 * trl_loss("sigmoid", c, r, rc, rr, n_c, n_r, beta).mean()
        + 0.2 * trl_loss("bco_pair", c, r, rc, rr, n_c, n_r, beta).mean()
        + 1.0 * trl_sft
    )
    ours, _ = weighted_mixture(
        lp,
        [
            ("dpo", 0.8, dpo, {"beta": beta}),
            ("bco_pair", 0.2, bco_pair, {"beta": beta}),
            ("chosen_nll", 1.0, chosen_nll, {}),
        ],
    )
    assert abs(float(ours.mean()) - float(trl_mpo)) <= 1e-6


def test_trl_source_still_has_these_formulas():
    trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
    src = inspect.getsource(trl_dpo.DPOTrainer._compute_loss)
    for line in [
        "per_sequence_loss = -F.logsigmoid(self.beta * delta_score)",
        "per_sequence_loss = torch.relu(1 - self.beta * delta_score)",
        "per_sequence_loss = (ipo_delta - 1 / (2 * self.beta)) ** 2",
        "per_sequence_loss = qw * (log_qw - log_pw) + ql * (log_ql - log_pl)",
        "per_sequence_loss = (clean_loss_term - flipped_loss_term) / (1 - 2 * self.label_smoothing)",
        "per_sequence_loss = -F.logsigmoid(chosen_rewards) - F.logsigmoid(-rejected_rewards)",
        "winner_margin_error = (chosen_logratios - 0.5 / self.beta) ** 2",
        "loser_margin_error = (rejected_logratios + 0.5 / self.beta) ** 2",
        "logratios_sorted, _ = torch.sort(logratios, dim=0)",
        "losses_rejected = 1 - torch.sigmoid(self.beta * (chosen_logratios - rejected_logratios))",
        "log_ratio_modulation = torch.sigmoid(logits / self.args.discopop_tau)",
        "batch_loss = -chosen_per_token_logps[chosen_mask.bool()].mean()",
        "loss += per_sequence_loss.mean() * loss_weight",
    ]:
        assert line in src, line

"""Preference losses as pure functions of per-sequence log-probs (no models, no I/O).

Every loss takes a `PairLogps` (policy and reference log π of the chosen y_w and rejected y_l
responses, summed over response tokens, and their token counts) plus its hyper-parameters, and
returns ``(per_example_loss [B], metrics)`` where every metric is a per-example tensor [B]:
``rewards_chosen``, ``rewards_rejected``, ``margins`` (chosen − rejected) and ``accuracy``
(1 where the chosen reward is higher). The caller sums them and divides by a global count.

Notation: h_w = log πθ(y_w|x) − log πref(y_w|x), h_l likewise, r = β·h (the implicit reward),
Δ = h_w − h_l.

Adding a loss is one place: write the function here under `@register(name, reference=...)`; the
objective table (`rayalign.objectives.OBJECTIVES`) and config validation pick it up from
`PREFERENCE_LOSSES`. The decorator returns the function unchanged, so it stays a pure function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

Metrics = dict[str, torch.Tensor]
LossFn = Callable[..., tuple[torch.Tensor, Metrics]]

# name -> (loss function, whether it needs reference log-probs); filled by `register`
PREFERENCE_LOSSES: dict[str, tuple[LossFn, bool]] = {}


def register(name: str, *, reference: bool) -> Callable[[LossFn], LossFn]:
    """Add a loss to `PREFERENCE_LOSSES` under `name`; `reference`: it reads reference log-probs."""

    def add(fn: LossFn) -> LossFn:
        if name in PREFERENCE_LOSSES:
            raise ValueError(f"preference loss {name!r} registered twice")
        PREFERENCE_LOSSES[name] = (fn, reference)
        return fn

    return add


@dataclass
class PairLogps:
    chosen: torch.Tensor  # log πθ(y_w|x), summed over the response tokens, [B]
    rejected: torch.Tensor  # log πθ(y_l|x), [B]
    ref_chosen: torch.Tensor | None = None  # log πref(y_w|x), [B]; None for reference-free losses
    ref_rejected: torch.Tensor | None = None
    chosen_tokens: torch.Tensor | None = None  # response lengths |y_w|, [B]; for length-normalising losses
    rejected_tokens: torch.Tensor | None = None

    def log_ratios(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.ref_chosen is None or self.ref_rejected is None:
            raise ValueError(
                "this loss needs reference log-probs (ref_chosen_logp / ref_rejected_logp): "
                "run the `reference` stage first or let the train loop hold a reference model"
            )
        return self.chosen - self.ref_chosen, self.rejected - self.ref_rejected

    def mean_logps(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _per_token(self.chosen, self.chosen_tokens), _per_token(self.rejected, self.rejected_tokens)


def _per_token(value: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
    if tokens is None:
        raise ValueError("this loss length-normalises: chosen_tokens / rejected_tokens are required")
    return value / tokens.clamp(min=1).to(value.dtype)


def reward_metrics(reward_chosen: torch.Tensor, reward_rejected: torch.Tensor) -> Metrics:
    """Per-example metrics shared by every loss; rewards are detached (they are reported, not trained)."""
    rc, rr = reward_chosen.detach(), reward_rejected.detach()
    return {"rewards_chosen": rc, "rewards_rejected": rr, "margins": rc - rr, "accuracy": (rc > rr).to(rc.dtype)}


@register("apo_zero", reference=True)
def apo_zero(lp: PairLogps, beta: float = 0.1) -> tuple[torch.Tensor, Metrics]:
    """APO-zero (D'Oosterlinck et al. 2024, "Anchored Preference Optimization and
    Contrastive Revisions", §3, the APO-zero objective).

    L = (1 − σ(r_w)) + σ(r_l): pushes the chosen likelihood up and the rejected one down, each
    anchored to the reference (the paper writes −σ(r_w) + σ(r_l); the constant 1 keeps L ≥ 0 and
    changes no gradient). Suited to data whose chosen answers beat the model's own outputs.
    """
    h_w, h_l = lp.log_ratios()
    r_w, r_l = beta * h_w, beta * h_l
    loss = (1 - torch.sigmoid(r_w)) + torch.sigmoid(r_l)
    return loss, reward_metrics(r_w, r_l)


@register("apo_down", reference=True)
def apo_down(lp: PairLogps, beta: float = 0.1) -> tuple[torch.Tensor, Metrics]:
    """APO-down (D'Oosterlinck et al. 2024, §3, the APO-down objective), both terms on raw log-ratios as in the paper.

    L = σ(r_w) + 1 − σ(r_w − r_l): lowers the chosen likelihood while widening the margin, for data
    whose chosen answers are worse than the model's own outputs. The paper writes σ(r_w) − σ(r_w − r_l);
    the constant 1 keeps L ≥ 0 (as in APO-zero) and changes no gradient.
    """
    h_w, h_l = lp.log_ratios()
    r_w, r_l = beta * h_w, beta * h_l
    loss = torch.sigmoid(r_w) + (1 - torch.sigmoid(r_w - r_l))
    return loss, reward_metrics(r_w, r_l)


def _smoothed_sigmoid(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """−(1 − ε)·log σ(z) − ε·log σ(−z): the logistic loss when a fraction ε of labels is flipped."""
    loss = -F.logsigmoid(z)
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-z)
    return loss


@register("dpo", reference=True)
def dpo(lp: PairLogps, beta: float = 0.1, label_smoothing: float = 0.0) -> tuple[torch.Tensor, Metrics]:
    """DPO, sigmoid loss (Rafailov et al. 2023, eq. 7): L = −log σ(r_w − r_l).

    `label_smoothing` ε > 0 gives conservative DPO (cDPO; Mitchell 2023, "A note on DPO with noisy
    preferences"): L = −(1 − ε)·log σ(r_w − r_l) − ε·log σ(r_l − r_w).
    """
    h_w, h_l = lp.log_ratios()
    r_w, r_l = beta * h_w, beta * h_l
    return _smoothed_sigmoid(r_w - r_l, label_smoothing), reward_metrics(r_w, r_l)


@register("ipo", reference=True)
def ipo(lp: PairLogps, beta: float = 0.1, token_average: bool = True) -> tuple[torch.Tensor, Metrics]:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm...", eq. 17).

    L = (h̄_w − h̄_l − 1/(2β))²: regresses the log-ratio margin onto 1/(2β) instead of pushing it to
    infinity, so it does not overfit deterministic preferences. By default h̄ is the log-ratio per
    response token (h/|y|): the IPO authors confirmed the paper's results used this form (TRL's `ipo`
    documentation); `token_average: false` uses the summed log-ratios. Reported rewards are β·h.
    """
    h_w, h_l = lp.log_ratios()
    a_w, a_l = (_per_token(h_w, lp.chosen_tokens), _per_token(h_l, lp.rejected_tokens)) if token_average else (h_w, h_l)
    loss = (a_w - a_l - 1.0 / (2.0 * beta)) ** 2
    return loss, reward_metrics(beta * h_w, beta * h_l)


@register("simpo", reference=False)
def simpo(lp: PairLogps, beta: float = 2.0, gamma: float = 0.5) -> tuple[torch.Tensor, Metrics]:
    """SimPO (Meng et al. 2024, eq. 6), reference-free.

    L = −log σ(β/|y_w|·log πθ(y_w|x) − β/|y_l|·log πθ(y_l|x) − γ): the reward is the
    length-normalised log-likelihood and γ is the target margin.
    """
    m_w, m_l = lp.mean_logps()
    r_w, r_l = beta * m_w, beta * m_l
    return -F.logsigmoid(r_w - r_l - gamma), reward_metrics(r_w, r_l)


def _log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    """log(p / (1 − p)) from log p; log(1 − p) = log(−expm1(log p)) stays accurate near p → 1."""
    mean_logp = mean_logp.clamp(max=-1e-6)  # p < 1, so 1 − p > 0
    return mean_logp - torch.log(-torch.expm1(mean_logp))


@register("orpo", reference=False)
def orpo(lp: PairLogps, beta: float = 0.1) -> tuple[torch.Tensor, Metrics]:
    """ORPO (Hong et al. 2024, eqs. 6–7), reference-free: NLL of the chosen + λ · odds-ratio loss.

    With P(y|x) = exp(mean token log-prob) and odds(y|x) = P / (1 − P):
    L = −mean log πθ(y_w|x) + λ · (−log σ(log odds(y_w|x) − log odds(y_l|x))), λ = `beta`
    (the config key every preference loss shares). Reported rewards are λ · mean log-prob.
    """
    m_w, m_l = lp.mean_logps()
    ratio = _log_odds(m_w) - _log_odds(m_l)
    loss = -m_w + beta * -F.logsigmoid(ratio)
    metrics = reward_metrics(beta * m_w, beta * m_l)
    metrics["log_odds_ratio"] = ratio.detach()
    metrics["nll"] = -m_w.detach()
    return loss, metrics


def kl_estimate(lp: PairLogps) -> torch.Tensor:
    """KTO's reference point z0 = max(0, mean log-ratio), detached (no gradient flows through it).

    The KTO paper estimates z0 on mismatched (x, y') pairs of the batch, which costs an extra
    forward pass; this estimate uses the batch's own completions (chosen and rejected alike),
    which are the same policy-vs-reference KL in expectation when the data are on-policy.
    """
    h_w, h_l = lp.log_ratios()
    return torch.cat([h_w, h_l]).detach().mean().clamp(min=0)


@register("kto", reference=True)
def kto(
    lp: PairLogps,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    kl: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """KTO (Ethayarajh et al. 2024, §4, the KTO loss), unpaired: each pair gives a desirable y_w and an undesirable y_l.

    L = λ_D·(1 − σ(β(h_w − z0))) + λ_U·(1 − σ(β(z0 − h_l))), z0 = `kl` or `kl_estimate(lp)`.
    The two examples never meet in one term, so the pairing is only where the data came from.
    """
    h_w, h_l = lp.log_ratios()
    z0 = kl_estimate(lp) if kl is None else kl.detach()
    loss = desirable_weight * (1 - torch.sigmoid(beta * (h_w - z0))) + undesirable_weight * (
        1 - torch.sigmoid(beta * (z0 - h_l))
    )
    metrics = reward_metrics(beta * h_w, beta * h_l)
    metrics["kl"] = z0.expand_as(h_w)
    return loss, metrics


@register("apo_zero_unpaired", reference=True)
def apo_zero_unpaired(lp: PairLogps, beta: float = 0.1) -> tuple[torch.Tensor, Metrics]:
    """Unpaired APO-zero (D'Oosterlinck et al. 2024, §3, the unpaired variant of APO-zero).

    Desirable y: 1 − σ(r); undesirable y: σ(r) — each example alone, no margin term. On paired data
    the per-pair sum equals paired APO-zero, which the tests check.
    """
    h_w, h_l = lp.log_ratios()
    r_w, r_l = beta * h_w, beta * h_l
    desirable = 1 - torch.sigmoid(r_w)
    undesirable = torch.sigmoid(r_l)
    return desirable + undesirable, reward_metrics(r_w, r_l)


@register("hinge", reference=True)
def hinge(lp: PairLogps, beta: float = 0.1) -> tuple[torch.Tensor, Metrics]:
    """Hinge loss on the reward margin (SLiC; Zhao et al. 2023): L = max(0, 1 − β·Δ)."""
    h_w, h_l = lp.log_ratios()
    r_w, r_l = beta * h_w, beta * h_l
    return torch.relu(1 - (r_w - r_l)), reward_metrics(r_w, r_l)


@register("robust", reference=True)
def robust(lp: PairLogps, beta: float = 0.1, label_smoothing: float = 0.1) -> tuple[torch.Tensor, Metrics]:
    """Robust DPO (Chowdhury et al. 2024, eq. 8): an unbiased loss under preference noise of rate ε.

    L = ((1 − ε)·(−log σ(βΔ)) − ε·(−log σ(−βΔ))) / (1 − 2ε), ε = `label_smoothing` < ½.
    """
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"robust: label_smoothing must be in [0, 0.5), got {label_smoothing}")
    h_w, h_l = lp.log_ratios()
    r_w, r_l = beta * h_w, beta * h_l
    z = r_w - r_l
    loss = (-(1 - label_smoothing) * F.logsigmoid(z) + label_smoothing * F.logsigmoid(-z)) / (1 - 2 * label_smoothing)
    return loss, reward_metrics(r_w, r_l)


@register("bco_pair", reference=True)
def bco_pair(lp: PairLogps, beta: float = 0.1) -> tuple[torch.Tensor, Metrics]:
    """BCO on pairs (Jung et al. 2024, binary classifier optimisation): the chosen response classified
    as good and the rejected as bad, each on its own implicit reward: L = −log σ(r_w) − log σ(−r_l)."""
    h_w, h_l = lp.log_ratios()
    r_w, r_l = beta * h_w, beta * h_l
    return -F.logsigmoid(r_w) - F.logsigmoid(-r_l), reward_metrics(r_w, r_l)


@register("nca_pair", reference=True)
def nca_pair(lp: PairLogps, beta: float = 0.1) -> tuple[torch.Tensor, Metrics]:
    """NCA on pairs (Chen et al. 2024, "Noise Contrastive Alignment", eq. 12 with K = 2):
    L = −log σ(r_w) − ½·log σ(−r_w) − ½·log σ(−r_l); it keeps the chosen likelihood from falling."""
    h_w, h_l = lp.log_ratios()
    r_w, r_l = beta * h_w, beta * h_l
    return -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l), reward_metrics(r_w, r_l)


@register("sppo_hard", reference=True)
def sppo_hard(lp: PairLogps, beta: float = 0.1) -> tuple[torch.Tensor, Metrics]:
    """SPPO with hard win probabilities (Wu et al. 2024, eq. 4.7 with P(y_w ≻ y_l) = 1):
    L = (h_w − 1/(2β))² + (h_l + 1/(2β))²: each log-ratio regressed onto ±1/(2β)."""
    h_w, h_l = lp.log_ratios()
    loss = (h_w - 0.5 / beta) ** 2 + (h_l + 0.5 / beta) ** 2
    return loss, reward_metrics(beta * h_w, beta * h_l)


@register("aot", reference=True)
def aot(lp: PairLogps, beta: float = 0.1, label_smoothing: float = 0.0) -> tuple[torch.Tensor, Metrics]:
    """AOT, paired (Melnyk et al. 2024, "Distributional Preference Alignment via Optimal Transport").

    The policy's margins m = log πθ(y_w) − log πθ(y_l) and the reference's margins m_ref are each
    sorted over the micro-batch; L_i = −log σ(β·(m_(i) − m_ref(i))) (with ε label smoothing): the
    policy's margin distribution must dominate the reference's. Batch-coupled: element i of the loss
    is the i-th order statistic, not pair i.
    """
    h_w, h_l = lp.log_ratios()
    m = torch.sort(lp.chosen - lp.rejected, dim=0).values
    m_ref = torch.sort((lp.chosen - h_w) - (lp.rejected - h_l), dim=0).values  # ref_chosen − ref_rejected
    return _smoothed_sigmoid(beta * (m - m_ref), label_smoothing), reward_metrics(beta * h_w, beta * h_l)


@register("aot_unpaired", reference=True)
def aot_unpaired(lp: PairLogps, beta: float = 0.1, label_smoothing: float = 0.0) -> tuple[torch.Tensor, Metrics]:
    """AOT, unpaired (Melnyk et al. 2024): the chosen log-ratios h_w and the rejected h_l are sorted
    separately over the micro-batch; L_i = −log σ(β·(h_w(i) − h_l(i))) (with ε label smoothing)."""
    h_w, h_l = lp.log_ratios()
    delta = torch.sort(h_w, dim=0).values - torch.sort(h_l, dim=0).values
    return _smoothed_sigmoid(beta * delta, label_smoothing), reward_metrics(beta * h_w, beta * h_l)


@register("discopop", reference=True)
def discopop(lp: PairLogps, beta: float = 0.1, tau: float = 0.05) -> tuple[torch.Tensor, Metrics]:
    """DiscoPOP (Chris Lu et al. 2024, "Discovering Preference Optimization Algorithms", eq. 5), the
    log-ratio modulated loss: with z = βΔ and w = σ(z/τ), L = (1 − w)·(−log σ(z)) + w·e^(−z)."""
    h_w, h_l = lp.log_ratios()
    r_w, r_l = beta * h_w, beta * h_l
    z = r_w - r_l
    w = torch.sigmoid(z / tau)
    return (1 - w) * -F.logsigmoid(z) + w * torch.exp(-z), reward_metrics(r_w, r_l)


@register("exo_pair", reference=True)
def exo_pair(lp: PairLogps, beta: float = 0.1, epsilon: float = 1e-3) -> tuple[torch.Tensor, Metrics]:
    """EXO on pairs (Ji et al. 2024, "Towards Efficient Exact Optimization...", eq. 16, K = 2): the
    reverse KL from the policy's pair distribution q = softmax(β·h) over {y_w, y_l} to the target
    p = (1 − ε, ε): L = q_w·(log q_w − log(1 − ε)) + q_l·(log q_l − log ε). Needs 0 < ε < 1."""
    if not 0 < epsilon < 1:
        raise ValueError(f"exo_pair: epsilon must be in (0, 1), got {epsilon}")
    h_w, h_l = lp.log_ratios()
    r_w, r_l = beta * h_w, beta * h_l
    z = r_w - r_l
    loss = torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-epsilon)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(epsilon)
    )
    return loss, reward_metrics(r_w, r_l)


@register("sigmoid_norm", reference=True)
def sigmoid_norm(lp: PairLogps, beta: float = 0.1) -> tuple[torch.Tensor, Metrics]:
    """Length-normalised DPO: L = −log σ(β·(h_w/|y_w| − h_l/|y_l|)), the log-ratios per response token
    (so long responses do not dominate the margin). Reported rewards are β·h/|y|."""
    h_w, h_l = lp.log_ratios()
    r_w, r_l = beta * _per_token(h_w, lp.chosen_tokens), beta * _per_token(h_l, lp.rejected_tokens)
    return -F.logsigmoid(r_w - r_l), reward_metrics(r_w, r_l)


@register("chosen_nll", reference=False)
def chosen_nll(lp: PairLogps) -> tuple[torch.Tensor, Metrics]:
    """Negative log-likelihood of the chosen response per token: L = −log πθ(y_w|x)/|y_w| (SFT on the
    chosen answers; TRL's `sft` term in mixtures). Reported rewards are the mean token log-probs."""
    m_w, m_l = lp.mean_logps()
    return -m_w, reward_metrics(m_w, m_l)


@register("rpo", reference=True)
def rpo(lp: PairLogps, beta: float = 0.1, alpha: float = 1.0) -> tuple[torch.Tensor, Metrics]:
    """RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization", eq. 1): DPO plus α times
    the chosen response's per-token NLL: L = −log σ(r_w − r_l) − α·log πθ(y_w|x)/|y_w|."""
    loss, metrics = dpo(lp, beta=beta)
    nll, _ = chosen_nll(lp)
    metrics["nll"] = nll.detach()
    return loss + alpha * nll, metrics


def weighted_mixture(
    lp: PairLogps, parts: Sequence[tuple[str, float, LossFn, dict[str, Any]]]
) -> tuple[torch.Tensor, Metrics]:
    """Σ_k weight_k · L_k (MPO-style mixtures, e.g. 0.8·dpo + 0.2·bco_pair + 1.0·chosen_nll).

    `parts`: (name, weight, loss function, its hyper-parameters). Metrics are the first part's (its
    rewards and accuracy) plus ``loss_<name>``, each part's unweighted loss.
    """
    if not parts:
        raise ValueError("weighted_mixture needs at least one loss")
    total: torch.Tensor | None = None
    metrics: Metrics = {}
    for name, weight, fn, params in parts:
        loss, m = fn(lp, **params)
        total = weight * loss if total is None else total + weight * loss
        metrics = metrics or dict(m)
        metrics[f"loss_{name}"] = loss.detach()
    assert total is not None
    return total, metrics

"""Preference losses as pure functions of per-sequence log-probs (no models, no I/O).

Every loss takes a `PairLogps` (policy and reference log π of the chosen y_w and rejected y_l
responses, summed over response tokens, and their token counts) plus its hyper-parameters, and
returns ``(per_example_loss [B], metrics)`` where every metric is a per-example tensor [B]:
``rewards_chosen``, ``rewards_rejected``, ``margins`` (chosen − rejected) and ``accuracy``
(1 where the chosen reward is higher). The caller sums them and divides by a global count.

Notation: h_w = log πθ(y_w|x) − log πref(y_w|x), h_l likewise, r = β·h (the implicit reward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

Metrics = dict[str, torch.Tensor]


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
            raise ValueError("this loss needs reference log-probs (ref_chosen_logp / ref_rejected_logp): "
                             "run the `reference` stage first or let the train loop hold a reference model")
        return self.chosen - self.ref_chosen, self.rejected - self.ref_rejected

    def mean_logps(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.chosen_tokens is None or self.rejected_tokens is None:
            raise ValueError("this loss length-normalises: chosen_tokens / rejected_tokens are required")
        return (self.chosen / self.chosen_tokens.clamp(min=1).to(self.chosen.dtype),
                self.rejected / self.rejected_tokens.clamp(min=1).to(self.rejected.dtype))


def reward_metrics(reward_chosen: torch.Tensor, reward_rejected: torch.Tensor) -> Metrics:
    """Per-example metrics shared by every loss; rewards are detached (they are reported, not trained)."""
    rc, rr = reward_chosen.detach(), reward_rejected.detach()
    return {"rewards_chosen": rc, "rewards_rejected": rr, "margins": rc - rr, "accuracy": (rc > rr).to(rc.dtype)}


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


def apo_down(lp: PairLogps, beta: float = 0.1) -> tuple[torch.Tensor, Metrics]:
    """APO-down (D'Oosterlinck et al. 2024, §3, the APO-down objective), both terms on raw log-ratios as in the paper.

    L = σ(r_w) − σ(r_w − r_l): lowers the chosen likelihood while widening the margin, for data
    whose chosen answers are worse than the model's own outputs.
    """
    h_w, h_l = lp.log_ratios()
    r_w, r_l = beta * h_w, beta * h_l
    loss = torch.sigmoid(r_w) - torch.sigmoid(r_w - r_l)
    return loss, reward_metrics(r_w, r_l)


def dpo(lp: PairLogps, beta: float = 0.1) -> tuple[torch.Tensor, Metrics]:
    """DPO, sigmoid loss (Rafailov et al. 2023, eq. 7): L = −log σ(r_w − r_l)."""
    h_w, h_l = lp.log_ratios()
    r_w, r_l = beta * h_w, beta * h_l
    return -F.logsigmoid(r_w - r_l), reward_metrics(r_w, r_l)


def ipo(lp: PairLogps, beta: float = 0.1) -> tuple[torch.Tensor, Metrics]:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm...", eq. 17).

    L = (h_w − h_l − 1/(2β))²: regresses the log-ratio margin onto 1/(2β) instead of pushing it to
    infinity, so it does not overfit deterministic preferences. Sequence log-probs are sums, as
    in the paper. Reported rewards are β·h.
    """
    h_w, h_l = lp.log_ratios()
    loss = (h_w - h_l - 1.0 / (2.0 * beta)) ** 2
    return loss, reward_metrics(beta * h_w, beta * h_l)


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


def kto(lp: PairLogps, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
        kl: torch.Tensor | None = None) -> tuple[torch.Tensor, Metrics]:
    """KTO (Ethayarajh et al. 2024, §4, the KTO loss), unpaired: each pair gives a desirable y_w and an undesirable y_l.

    L = λ_D·(1 − σ(β(h_w − z0))) + λ_U·(1 − σ(β(z0 − h_l))), z0 = `kl` or `kl_estimate(lp)`.
    The two examples never meet in one term, so the pairing is only where the data came from.
    """
    h_w, h_l = lp.log_ratios()
    z0 = kl_estimate(lp) if kl is None else kl.detach()
    loss = (desirable_weight * (1 - torch.sigmoid(beta * (h_w - z0)))
            + undesirable_weight * (1 - torch.sigmoid(beta * (z0 - h_l))))
    metrics = reward_metrics(beta * h_w, beta * h_l)
    metrics["kl"] = z0.expand_as(h_w)
    return loss, metrics


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


LossFn = Callable[..., tuple[torch.Tensor, Metrics]]

# name -> (loss function, whether it needs reference log-probs)
PREFERENCE_LOSSES: dict[str, tuple[LossFn, bool]] = {
    "apo_zero": (apo_zero, True),
    "apo_down": (apo_down, True),
    "dpo": (dpo, True),
    "ipo": (ipo, True),
    "simpo": (simpo, False),
    "orpo": (orpo, False),
    "kto": (kto, True),
    "apo_zero_unpaired": (apo_zero_unpaired, True),
}

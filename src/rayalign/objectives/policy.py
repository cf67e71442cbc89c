"""Policy-gradient math for online alignment (GRPO and its variants) as pure functions on tensors.

Rollouts give G responses per prompt, each with a scalar reward. The pieces:

- `group_advantages`: GRPO's group-relative advantage A_i = (r_i − mean_g r) / (std_g r + eps)
  (Shao et al. 2024, DeepSeekMath §4.1.2); ``scale="none"`` drops the std division (Dr. GRPO, Liu et
  al. 2025 "Understanding R1-Zero-Like Training", which shows it biases towards easy/hard groups);
- `rloo_advantages`: the leave-one-out baseline A_i = r_i − mean_{j≠i} r_j (Ahmadian et al. 2024);
- `clipped_policy_loss`: the PPO clipped surrogate per token with the importance ratio
  ρ = πθ/π_old, asymmetric clipping [1 − ε_low, 1 + ε_high] (DAPO, Yu et al. 2025 "clip-higher"),
  an optional k3 KL penalty to the reference (Schulman's k3 estimator, as in GRPO), and three
  ways to average tokens: per sequence then over sequences (GRPO), over all tokens of the batch
  (DAPO "token-level"), or a constant divisor (Dr. GRPO, no length bias).

Shapes: rewards [P, G] (P prompts × G samples); per-token tensors [N, T] with a 0/1 `mask` of the
response tokens; advantages [N] (one per sequence, broadcast over its tokens).
"""

from __future__ import annotations

from typing import Literal

import torch

Aggregation = Literal["sequence", "token", "constant"]


def group_advantages(rewards: torch.Tensor, scale: Literal["std", "none"] = "std", eps: float = 1e-4) -> torch.Tensor:
    """[P, G] rewards → [P, G] advantages, centred per group (row); ``std``: divided by the group's
    sample standard deviation (unbiased, as TRL's GRPOTrainer) + eps, so a group where every sample
    got the same reward gets advantage 0, not a division by zero."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if scale == "none":
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """[P, G] rewards → r_i − mean of the other G − 1 samples of its group = G/(G−1)·(r_i − mean)."""
    g = rewards.shape[1]
    if g < 2:
        raise ValueError("rloo_advantages needs at least 2 samples per prompt")
    return (rewards - rewards.mean(dim=1, keepdim=True)) * g / (g - 1)


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL(πθ ‖ π_ref) estimate k3 = e^(ref − θ) − (ref − θ) − 1 (≥ 0, unbiased)."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, how: Aggregation, constant: float | None = None
) -> torch.Tensor:
    """Average per-token values: ``sequence`` (mean over each sequence's tokens, then over sequences),
    ``token`` (sum over every response token ÷ their number), ``constant`` (sum ÷ (N · constant), with
    `constant` e.g. the maximum response length; default T)."""
    mask = mask.to(per_token.dtype)
    total = per_token * mask
    if how == "sequence":
        return (total.sum(1) / mask.sum(1).clamp(min=1)).mean()
    if how == "token":
        return total.sum() / mask.sum().clamp(min=1)
    if how == "constant":
        return total.sum() / (per_token.shape[0] * (constant or per_token.shape[1]))
    raise ValueError(f"aggregate: unknown aggregation {how!r}; use sequence, token or constant")


def clipped_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    kl_coef: float = 0.0,
    ref_logps: torch.Tensor | None = None,
    aggregation: Aggregation = "sequence",
    constant: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO/GRPO clipped surrogate: per token −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A) + β_KL·k3.

    logps / old_logps / ref_logps: [N, T] per-token log-probs under the policy being trained, the policy
    that sampled the rollouts, and the reference; advantages [N]; mask [N, T]. Returns the aggregated
    loss and metrics: ``clip_fraction`` (share of response tokens whose clipped term is the active one),
    ``ratio_mean``, and ``kl`` (mean k3 over response tokens) when a reference is given.
    """
    ratio = torch.exp(logps - old_logps)
    adv = advantages.unsqueeze(1).to(ratio.dtype)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    m = mask.to(ratio.dtype)
    n_tokens = m.sum().clamp(min=1)
    metrics = {
        "clip_fraction": ((clipped < unclipped).to(ratio.dtype) * m).sum().detach() / n_tokens,
        "ratio_mean": (ratio.detach() * m).sum() / n_tokens,
    }
    if ref_logps is not None:
        kl = k3_kl(logps, ref_logps)
        metrics["kl"] = (kl.detach() * m).sum() / n_tokens
        if kl_coef:
            per_token = per_token + kl_coef * kl
    elif kl_coef:
        raise ValueError("clipped_policy_loss: kl_coef > 0 needs ref_logps")
    return aggregate(per_token, mask, aggregation, constant), metrics

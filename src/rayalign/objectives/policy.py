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
  (DAPO "token-level"), or a constant divisor (Dr. GRPO, no length bias);
- `importance_weights`: off-policy correction for rollouts the trainer did not sample itself (an
  asynchronous run's stale policy, or an inference engine whose numerics differ from the trainer's):
  per token w = π_old/μ with μ the behaviour policy's log-probs as the engine reported them, either
  truncated at a cap c (TIS: min(w, c); Yao et al. 2025 "Your efficient RL framework secretly brings
  you off-policy RL training") or masked past it (MIS: w where w ≤ c, else 0); `clipped_policy_loss`
  multiplies each token's term by the (detached) weight and reports ``mismatch_kl``, the k3
  estimate of KL(μ ‖ π_θ) over the sampled tokens (the train/inference mismatch).

Shapes: rewards [P, G] (P prompts × G samples); per-token tensors [N, T] with a 0/1 `mask` of the
response tokens; advantages [N] (one per sequence, broadcast over its tokens).
"""

from __future__ import annotations

from typing import Literal

import torch

Aggregation = Literal["sequence", "token", "constant"]
Correction = Literal["none", "tis", "mis"]


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


def importance_weights(
    old_logps: torch.Tensor, behav_logps: torch.Tensor, correction: Correction, cap: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token off-policy weights w = exp(old − behaviour), detached, and the bool tensor of the
    tokens the cap acted on: ``tis`` truncates w at `cap`, ``mis`` zeroes tokens whose w > `cap`."""
    w = torch.exp(old_logps.detach() - behav_logps.to(old_logps.dtype))
    over = w > cap
    if correction == "tis":
        return torch.clamp(w, max=cap), over
    if correction == "mis":
        return w.masked_fill(over, 0.0), over
    raise ValueError(f"importance correction {correction!r}: use none, tis or mis")


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
    behav_logps: torch.Tensor | None = None,
    correction: Correction = "none",
    cap: float = 2.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO/GRPO clipped surrogate: per token −w·min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A) + β_KL·k3.

    logps / old_logps / ref_logps: [N, T] per-token log-probs under the policy being trained, the policy
    that sampled the rollouts, and the reference; advantages [N]; mask [N, T]. Returns the aggregated
    loss and metrics: ``clip_fraction`` (share of response tokens whose clipped term is the active one),
    ``ratio_mean``, and ``kl`` (mean k3 over response tokens) when a reference is given.

    behav_logps: [N, T] log-probs of the sampled tokens under the policy that sampled them, as the
    engine computed them. When given, ``mismatch_kl`` is reported; with ``correction`` tis / mis
    each token's policy term is weighted by `importance_weights` (w = 1 without a correction), and
    ``is_weight_mean`` / ``is_capped_fraction`` are reported.
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
    if behav_logps is not None:
        metrics["mismatch_kl"] = (k3_kl(behav_logps.to(ratio.dtype), logps.detach()) * m).sum() / n_tokens
        if correction != "none":
            w, over = importance_weights(old_logps, behav_logps, correction, cap)
            per_token = per_token * w
            metrics["is_weight_mean"] = (w * m).sum() / n_tokens
            metrics["is_capped_fraction"] = (over.to(ratio.dtype) * m).sum() / n_tokens
    if ref_logps is not None:
        kl = k3_kl(logps, ref_logps)
        metrics["kl"] = (kl.detach() * m).sum() / n_tokens
        if kl_coef:
            per_token = per_token + kl_coef * kl
    elif kl_coef:
        raise ValueError("clipped_policy_loss: kl_coef > 0 needs ref_logps")
    return aggregate(per_token, mask, aggregation, constant), metrics


class PolicyObjective:
    """GRPO-family loss as a trainer objective (``objective: {name: grpo, eps_low, eps_high, kl_coef,
    aggregation, constant, correction, cap}``) over rollout rows.

    A row is one sampled response: ``prompt_ids``, ``response_ids`` (the sampled tokens, EOS
    included; a multi-turn episode's ids after the prompt, with ``response_mask`` 0 on the
    environment's), its ``advantage`` and optionally ``behav_logps`` (the engine's log-prob of each
    sampled token: the behaviour policy, for the mismatch metric and the `correction`). The rollout side may add ``old_logps`` / ``ref_logps`` ([N, K]
    tensors from `token_logps_of`) to the collated batch; without ``old_logps`` the ratio is taken
    against the detached current log-probs (ρ = 1, the single-update case).

    `loss` returns SUMS in the units of `count` (sequences; response tokens for ``token``
    aggregation), so the trainer's division by the global count of the step gives the aggregation
    over every rank's and micro-batch's rollouts: the mean over sequences of per-sequence means
    (``sequence``), over all response tokens (``token``), or Σ tokens ÷ (N · constant) (``constant``).
    Metric sums (clip_fraction, ratio_mean, kl) are the micro-batch's token means × its units.
    """

    name = "grpo"
    model_class = "causal_lm"

    def __init__(
        self,
        eps_low: float = 0.2,
        eps_high: float = 0.2,
        kl_coef: float = 0.0,
        aggregation: Aggregation = "sequence",
        constant: float | None = None,
        correction: Correction = "none",
        cap: float = 2.0,
    ):
        if correction not in ("none", "tis", "mis"):
            raise ValueError(f"objective.correction: {correction!r}; use none, tis or mis")
        if cap <= 0:
            raise ValueError(f"objective.cap: {cap} must be > 0 (the importance-weight cap c)")
        self.correction, self.cap = correction, cap
        if aggregation not in ("sequence", "token", "constant"):
            raise ValueError(f"objective.aggregation: {aggregation!r}; use sequence, token or constant")
        if aggregation == "constant" and not constant:
            raise ValueError("objective.constant: constant aggregation needs the divisor (e.g. rollout max_tokens)")
        self.eps_low, self.eps_high, self.kl_coef = eps_low, eps_high, kl_coef
        self.aggregation, self.constant = aggregation, constant
        self.needs_reference = kl_coef > 0

    def collate(self, rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
        from rayalign.constants import IGNORE
        from rayalign.objectives.causal_lm import pad_to

        seqs = [list(r["prompt_ids"]) + list(r["response_ids"]) for r in rows]
        # a multi-turn row's environment tokens (response_mask 0) are context, not trained on
        labels = [
            [IGNORE] * len(r["prompt_ids"])
            + [
                t if m else IGNORE
                for t, m in zip(r["response_ids"], r.get("response_mask") or [1] * len(r["response_ids"]))
            ]
            for r in rows
        ]
        # Only positions from the shortest prompt's last token on predict a response token: the LM
        # head (most of a small model's compute) runs on those only.
        width = max(len(s) for s in seqs)
        keep = width - min(len(r["prompt_ids"]) for r in rows) + 1
        batch = {
            "input_ids": pad_to(seqs, pad_id),
            "attention_mask": pad_to([[1] * len(s) for s in seqs], 0),
            "labels": pad_to(labels, IGNORE),
            "advantages": torch.tensor([float(r["advantage"]) for r in rows], dtype=torch.float32),
            "logits_to_keep": torch.tensor(keep),
        }
        if all(r.get("behav_logps") is not None for r in rows):
            # laid out like the labels, then cut to the scored window `token_logps_of` returns
            behav = torch.zeros(len(rows), width, dtype=torch.float32)
            for i, r in enumerate(rows):
                n_prompt, lps = len(r["prompt_ids"]), list(r["behav_logps"])
                if len(lps) != len(r["response_ids"]):
                    raise ValueError(f"row {i}: {len(lps)} behaviour log-probs for {len(r['response_ids'])} tokens")
                behav[i, n_prompt : n_prompt + len(lps)] = torch.tensor(lps, dtype=torch.float32)
            batch["behav_logps"] = behav[:, width - keep + 1 :]
        return batch

    def count(self, batch: dict) -> torch.Tensor:
        if self.aggregation == "token":
            from rayalign.constants import IGNORE

            return (batch["labels"][:, 1:] != IGNORE).sum()
        return torch.tensor(batch["labels"].shape[0])

    def loss(self, model, batch: dict, ref_model=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logps, mask = token_logps_of(model, batch)
        old = batch.get("old_logps")
        ref = batch.get("ref_logps")
        if ref is None and ref_model is not None:
            with torch.no_grad():
                ref = token_logps_of(ref_model, batch)[0]
        loss, metrics = clipped_policy_loss(
            logps,
            logps.detach() if old is None else old,
            batch["advantages"],
            mask,
            self.eps_low,
            self.eps_high,
            self.kl_coef,
            ref,
            self.aggregation,
            self.constant,
            batch.get("behav_logps"),
            self.correction,
            self.cap,
        )
        units = self.count(batch).to(loss.device, loss.dtype)
        return loss * units, {k: v * units for k, v in metrics.items()}


def token_logps_of(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the response tokens of a collated rollout batch, and their mask [N, K]."""
    from rayalign.objectives.logps import token_logps

    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        use_cache=False,
        logits_to_keep=int(batch["logits_to_keep"]),
    )
    return token_logps(out.logits, batch["labels"])

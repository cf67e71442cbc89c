"""Per-sequence log-probabilities: the one quantity every preference loss is built on.

`sequence_logps(logits, labels)` sums log π(token) over the target positions of each row
(labels != -100) and returns the sums with the number of target tokens, so losses that
length-normalise (SimPO, ORPO) divide by the count themselves.

Labels are aligned with the inputs (the Hugging Face convention): position t of `logits`
predicts `labels[t + 1]`, so the shift happens here and nowhere else.
"""

from __future__ import annotations

import torch

IGNORE = -100


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor,
                   mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of target-token log-probs per row, and the number of target tokens per row.

    logits: [B, T, V] (any float dtype; computed in fp32), labels: [B, T] with -100 where no
    token is scored, mask: optional [B, T] bool of extra positions to keep (e.g. attention).
    `logits` may cover only the last K positions of the sequence (``logits_to_keep``); labels
    are then cut to the matching window.
    """
    if logits.shape[1] != labels.shape[1]:
        # the model kept only the last K positions' logits: they predict the last K-1 labels
        labels = labels[:, -logits.shape[1]:]
        mask = mask[:, -logits.shape[1]:] if mask is not None else None
    targets = labels[:, 1:]
    keep = targets != IGNORE
    if mask is not None:
        keep = keep & mask[:, 1:].bool()
    logits = logits[:, :-1].float()
    safe = targets.masked_fill(~keep, 0)  # any valid index; masked out below
    # log softmax at the target only: logit[target] - logsumexp(logits), without a [B, T, V] copy
    picked = torch.gather(logits, 2, safe.unsqueeze(-1)).squeeze(-1)
    token_logps = picked - torch.logsumexp(logits, dim=-1)
    token_logps = token_logps.masked_fill(~keep, 0.0)
    return token_logps.sum(-1), keep.sum(-1)


def scored_token_logps(hidden: torch.Tensor, head: torch.nn.Module,
                       labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Like `sequence_logps`, but from the last hidden states: the vocabulary projection `head` runs
    only on the positions that predict a scored token, so prompt and padding positions never pay the
    V-wide matmul nor hold [tokens, V] logits for backward.

    hidden: [B, T, H], labels: [B, T] aligned with the inputs (−100 = not scored).
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE
    picked_hidden = hidden[:, :-1][keep]  # [N, H], N = scored tokens of the whole batch
    logits = head(picked_hidden).float()  # [N, V]
    token_logps = torch.gather(logits, 1, targets[keep].unsqueeze(1)).squeeze(1) - torch.logsumexp(logits, dim=-1)
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(targets)[keep]
    sums = torch.zeros(labels.shape[0], dtype=token_logps.dtype, device=token_logps.device)
    return sums.index_add(0, rows, token_logps), keep.sum(-1)


def response_window(labels: torch.Tensor) -> int:
    """How many trailing positions of the batch hold every scored token, plus the one before.

    With right padding, position t's logits are needed only from the first target's predecessor
    on; passing this as ``logits_to_keep`` skips the lm-head (V-wide) on the shared prompt part.
    """
    scored = (labels != IGNORE).any(0)
    if not bool(scored.any()):
        return labels.shape[1]
    first = int(scored.nonzero()[0, 0])
    return labels.shape[1] - max(first - 1, 0)

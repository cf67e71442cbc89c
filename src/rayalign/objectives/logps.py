"""Per-sequence log-probabilities: the one quantity every preference loss is built on.

`sequence_logps(logits, labels)` sums log π(token) over the target positions of each row
(labels != -100) and returns the sums with the number of target tokens, so losses that
length-normalise (SimPO, ORPO) divide by the count themselves.

Labels are aligned with the inputs (the Hugging Face convention): position t of `logits`
predicts `labels[t + 1]`, so the shift happens here and nowhere else.
"""

from __future__ import annotations

import torch

from rayalign.constants import IGNORE


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 → fp32 for the log-softmax (a 50k-word vocabulary loses digits in bf16); fp64 stays fp64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of target-token log-probs per row, and the number of target tokens per row.

    logits: [B, T, V] (any float dtype; computed in fp32), labels: [B, T] with -100 where no
    token is scored, mask: optional [B, T] bool of extra positions to keep (e.g. attention).
    `logits` may cover only the last K positions of the sequence (``logits_to_keep``); labels
    are then cut to the matching window.
    """
    per_token, keep = token_logps(logits, labels, mask)
    return per_token.sum(-1), keep.sum(-1)


def token_logps(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs [B, T-1] of the targets (0 where not scored) and the bool `keep` [B, T-1]
    of the scored positions; arguments as in `sequence_logps` (policy-gradient losses need tokens)."""
    if logits.shape[1] != labels.shape[1]:
        # the model kept only the last K positions' logits: they predict the last K-1 labels
        labels = labels[:, -logits.shape[1] :]
        mask = mask[:, -logits.shape[1] :] if mask is not None else None
    targets = labels[:, 1:]
    keep = targets != IGNORE
    if mask is not None:
        keep = keep & mask[:, 1:].bool()
    logits = at_least_fp32(logits[:, :-1])
    safe = targets.masked_fill(~keep, 0)  # any valid index; masked out below
    # log softmax at the target only: logit[target] - logsumexp(logits), without a [B, T, V] copy
    picked = torch.gather(logits, 2, safe.unsqueeze(-1)).squeeze(-1)
    per_token = picked - torch.logsumexp(logits, dim=-1)
    return per_token.masked_fill(~keep, 0.0), keep


def sums_by_sequence(
    logits: torch.Tensor,
    targets: torch.Tensor,
    sequence: torch.Tensor,
    n: int,
    position: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sums of target log-probs and target counts from flat scored positions.

    logits: [N, V] at the N positions that predict a target, targets: [N] token ids, sequence: [N]
    the index (0..n-1) of the sequence each target belongs to (a padded row, or one of several
    sequences packed into a row). With `position` ([N] indices into M ≤ N rows of `logits`), several
    targets read the logits of one position (prefix-shared layouts: a prompt's last token predicts
    the first token of both responses), and the log-normaliser is computed once per position.
    """
    logits = at_least_fp32(logits)
    lse = torch.logsumexp(logits, dim=-1)
    if position is None:
        token_logps = torch.gather(logits, 1, targets.unsqueeze(1)).squeeze(1) - lse
    else:
        token_logps = logits[position, targets] - lse[position]
    sums = torch.zeros(n, dtype=token_logps.dtype, device=token_logps.device).index_add(0, sequence, token_logps)
    counts = torch.zeros(n, dtype=torch.long, device=sequence.device).index_add(0, sequence, torch.ones_like(sequence))
    return sums, counts


def scored_token_logps(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    labels: torch.Tensor,
    sequence: torch.Tensor | None = None,
    n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like `sequence_logps`, but from the last hidden states: the vocabulary projection `head` runs
    only on the positions that predict a scored token, so prompt and padding positions never pay the
    V-wide matmul nor hold [tokens, V] logits for backward.

    hidden: [B, T, H], labels: [B, T] aligned with the inputs (−100 = not scored). Sums are per row,
    or per packed sequence when `sequence` ([B, T], the sequence index of every position) and the
    number of sequences `n` are given.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE
    if sequence is None:
        sequence = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(labels)
        n = labels.shape[0]
    assert n is not None, "n (the number of sequences) goes with `sequence`"
    picked_hidden = hidden[:, :-1][keep]  # [N, H], N = scored tokens of the whole batch
    return sums_by_sequence(head(picked_hidden), targets[keep], sequence[:, 1:][keep], n)

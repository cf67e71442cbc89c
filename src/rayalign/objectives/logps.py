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


CHUNK_ELEMENTS = 1 << 23  # logits per chunk of the fused projection (8 M: 32 MiB in fp32)


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The matmul dtype a Linear would use here: autocast's when it is on, else the weight's."""
    kind = weight.device.type
    if torch.is_autocast_enabled(kind) and weight.dtype.is_floating_point:
        return torch.get_autocast_dtype(kind)
    return weight.dtype


def _accumulate(into: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """into += a @ b, in place when the dtypes allow (no [V, H] temporary)."""
    if a.dtype == into.dtype:
        into.addmm_(a, b)
    else:
        into += (a @ b).to(into.dtype)


class _ProjectedTargetLogps(torch.autograd.Function):
    """log softmax(hidden @ weightᵀ + bias)[target] per row, chunk by chunk: the [N, V] logits never
    exist whole (nor in fp32, nor saved for backward); backward recomputes each chunk's logits."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, dtype):
        h, w = hidden.to(dtype), weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        n = h.shape[0]
        out = torch.empty(n, dtype=torch.promote_types(dtype, torch.float32), device=h.device)
        lse = torch.empty_like(out)
        for s in range(0, n, chunk):
            logits = at_least_fp32(torch.nn.functional.linear(h[s : s + chunk], w, b))
            lse[s : s + chunk] = torch.logsumexp(logits, dim=-1)
            out[s : s + chunk] = logits.gather(1, targets[s : s + chunk, None]).squeeze(1) - lse[s : s + chunk]
        ctx.save_for_backward(h, w, b, targets, lse)
        ctx.chunk, ctx.dtypes = chunk, (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return out

    @staticmethod
    def backward(ctx, grad):
        h, w, b, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(w.shape, dtype=lse.dtype, device=w.device) if need_w else None
        grad_b = torch.zeros(w.shape[0], dtype=lse.dtype, device=w.device) if need_b else None
        for s in range(0, h.shape[0], ctx.chunk):
            hc, g = h[s : s + ctx.chunk], grad[s : s + ctx.chunk].to(lse.dtype)
            logits = at_least_fp32(torch.nn.functional.linear(hc, w, b))
            # d logp[t] / d logits = onehot(t) − softmax(logits), times the incoming gradient of the row
            d = torch.exp(logits - lse[s : s + ctx.chunk, None]).mul_(-g[:, None])
            d.scatter_add_(1, targets[s : s + ctx.chunk, None], g[:, None])
            if grad_b is not None:
                grad_b += d.sum(0)
            d = d.to(h.dtype)
            if grad_h is not None:
                grad_h[s : s + ctx.chunk] = d @ w
            if grad_w is not None:
                _accumulate(grad_w, d.t(), hc)
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        return (
            grad_h.to(h_dtype) if grad_h is not None else None,
            grad_w.to(w_dtype) if grad_w is not None else None,
            grad_b.to(b_dtype) if grad_b is not None else None,
            None,
            None,
            None,
        )


def projected_target_logps(
    hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """log π(target) of each row of `hidden` ([N, H]) under the vocabulary projection `head`, [N] in
    fp32 (fp64 for fp64 models): the same values and gradients as
    ``log_softmax(head(hidden).float(), -1).gather(1, targets)``, computed `chunk` rows at a time
    (default: ~8 M logits per chunk), so neither the forward nor the backward ever holds [N, V]
    logits. The matmuls run in autocast's dtype when autocast is on (as `head` itself would)."""
    if chunk is None:
        chunk = max(1, CHUNK_ELEMENTS // head.out_features)
    dtype = _compute_dtype(head.weight)
    return _ProjectedTargetLogps.apply(hidden, head.weight, head.bias, targets, chunk, dtype)


class _ProjectedNllSum(torch.autograd.Function):
    """Σ −log softmax(hidden @ weightᵀ + bias)[target] over rows whose target is not IGNORE, chunk by
    chunk, with the gradients computed in the same pass (the loss is a scalar, so backward only scales
    them): the [N, V] logits never exist whole and are never recomputed."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, dtype, grads):
        h, w = hidden.to(dtype), weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        acc = torch.promote_types(dtype, torch.float32)
        need_h, need_w, need_b = grads
        grad_h = torch.zeros_like(h) if need_h else None
        grad_w = torch.zeros(w.shape, dtype=acc, device=w.device) if need_w else None
        grad_b = torch.zeros(w.shape[0], dtype=acc, device=w.device) if need_b else None
        total = torch.zeros((), dtype=acc, device=h.device)
        for s in range(0, h.shape[0], chunk):
            hc, t = h[s : s + chunk], targets[s : s + chunk]
            keep = t != IGNORE
            safe = t.masked_fill(~keep, 0)[:, None]
            logits = at_least_fp32(torch.nn.functional.linear(hc, w, b))
            lse = torch.logsumexp(logits, dim=-1)
            total += ((lse - logits.gather(1, safe).squeeze(1)) * keep).sum()
            if not (need_h or need_w or need_b):
                continue
            # d nll / d logits = softmax(logits) − onehot(target), zero on unscored rows
            d = torch.exp(logits.sub_(lse[:, None])).mul_(keep[:, None])
            d.scatter_add_(1, safe, -keep[:, None].to(d.dtype))
            if grad_b is not None:
                grad_b += d.sum(0)
            d = d.to(h.dtype)
            if grad_h is not None:
                grad_h[s : s + chunk] = d @ w
            if grad_w is not None:
                _accumulate(grad_w, d.t(), hc)
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad):
        out = [(g * grad.to(g.dtype)).to(dt) if g is not None else None for g, dt in zip(ctx.grads, ctx.dtypes)]
        return (*out, None, None, None, None)


def projected_nll_sum(
    hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """Σ of next-token negative log-likelihoods at the rows of `hidden` ([N, H]) whose target is not
    −100: the same value and gradients as ``cross_entropy(head(hidden).float(), targets,
    reduction="sum")``, computed `chunk` rows at a time with the gradients formed in the forward pass
    (as fused linear-cross-entropy kernels do), so no [N, V] logits are held for backward or computed
    twice. Differentiate the result (times any scalar) once; matmuls in autocast's dtype when on."""
    if chunk is None:
        chunk = max(1, CHUNK_ELEMENTS // head.out_features)
    grads = tuple(
        torch.is_grad_enabled() and t is not None and t.requires_grad for t in (hidden, head.weight, head.bias)
    )
    return _ProjectedNllSum.apply(hidden, head.weight, head.bias, targets, chunk, _compute_dtype(head.weight), grads)


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
    return sequence_sums(token_logps, sequence, n)


def scored_token_logps(
    hidden: torch.Tensor,
    head: torch.nn.Linear,
    labels: torch.Tensor,
    sequence: torch.Tensor | None = None,
    n: int | None = None,
    chunked: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like `sequence_logps`, but from the last hidden states: the vocabulary projection `head` runs
    only on the positions that predict a scored token, so prompt and padding positions never pay the
    V-wide matmul nor hold [tokens, V] logits for backward.

    hidden: [B, T, H], labels: [B, T] aligned with the inputs (−100 = not scored). Sums are per row,
    or per packed sequence when `sequence` ([B, T], the sequence index of every position) and the
    number of sequences `n` are given. ``chunked``: projection and log-softmax chunk by chunk
    (`projected_target_logps`), never holding [N, V] logits.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE
    if sequence is None:
        sequence = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(labels)
        n = labels.shape[0]
    assert n is not None, "n (the number of sequences) goes with `sequence`"
    picked_hidden = hidden[:, :-1][keep]  # [N, H], N = scored tokens of the whole batch
    if not chunked:
        return sums_by_sequence(head(picked_hidden), targets[keep], sequence[:, 1:][keep], n)
    return sequence_sums(projected_target_logps(picked_hidden, head, targets[keep]), sequence[:, 1:][keep], n)


def sequence_sums(token_logps: torch.Tensor, sequence: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sums of flat token log-probs ([N], sequence index of each in `sequence`) and counts."""
    sums = torch.zeros(n, dtype=token_logps.dtype, device=token_logps.device).index_add(0, sequence, token_logps)
    counts = torch.zeros(n, dtype=torch.long, device=sequence.device).index_add(0, sequence, torch.ones_like(sequence))
    return sums, counts


def splittable_causal_lm(model) -> bool:
    """A bare Hugging Face causal LM whose body (`model.model`) and head (`model.lm_head`, a plain Linear
    with no logit scaling or soft-capping) can be called apart. FSDP2-sharded and peft-wrapped models
    are not: their parameters are gathered by hooks on the module the caller would skip."""
    from torch.distributed.fsdp import FSDPModule
    from transformers import PreTrainedModel

    config = getattr(model, "config", None)
    return (
        isinstance(model, PreTrainedModel)
        and not isinstance(model, FSDPModule)
        and isinstance(getattr(model, "lm_head", None), torch.nn.Linear)
        and hasattr(model, "model")
        and getattr(config, "final_logit_softcapping", None) is None
        and getattr(config, "logit_scale", None) is None
    )

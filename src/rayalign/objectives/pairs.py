"""Preference and reward objectives for the train loop: pairs → one forward → a pure loss.

A micro-batch of B pairs becomes ONE forward pass over 2B rows: rows [0, B) are prompt+chosen,
rows [B, 2B) prompt+rejected (right-padded, labels −100 on the prompt and the padding). The
vocabulary-wide projection runs only where a response token is scored (a bare HF model) or over
the trailing window that holds the responses (``logits_to_keep``; FSDP2- or peft-wrapped models).

Reference log-probs come from the rows when the `reference` stage precomputed them
(``ref_chosen_logp`` / ``ref_rejected_logp``), else from a frozen reference model the loop passes
in; both paths use the very same collate and `pair_logps`, so they agree to float precision.

These classes implement the Objective protocol of `rayalign.objectives`:
`collate`, `count` (pairs) and `loss` returning the SUM over the micro-batch plus metric sums.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from rayalign.objectives.logps import (
    IGNORE,
    projected_target_logps,
    scored_token_logps,
    sequence_logps,
    sequence_sums,
    splittable_causal_lm,
    sums_by_sequence,
)
from rayalign.objectives.preference import PREFERENCE_LOSSES, LossFn, PairLogps, weighted_mixture
from rayalign.objectives.reward import bradley_terry

REF_KEYS = ("ref_chosen_logp", "ref_rejected_logp")


def _ids(value: Any) -> list[int]:
    # rows arrive as python lists (jsonl), numpy arrays (parquet / Ray Data) or tensors
    return [int(x) for x in value]


def collate_sequences(
    prompts: Sequence[list[int]], responses: Sequence[list[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """prompt+response rows, right-padded; labels hold the response ids only (−100 elsewhere)."""
    width = max(len(p) + len(y) for p, y in zip(prompts, responses))
    n = len(responses)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    for i, (p, y) in enumerate(zip(prompts, responses)):
        seq = p + y
        input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        labels[i, len(p) : len(seq)] = torch.tensor(y, dtype=torch.long)
        attention_mask[i, : len(seq)] = 1
    # logits are needed from the position before the earliest response token on
    first_target = min(len(p) for p in prompts)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "logits_to_keep": torch.tensor(width - first_target + 1, dtype=torch.long),
        "pad_id": torch.tensor(pad_id, dtype=torch.long),
    }


def pair_sequences(rows: Sequence[dict]) -> tuple[list[list[int]], list[list[int]]]:
    """Rows with prompt_ids / chosen_ids / rejected_ids → (prompts, responses) of the 2B sequences:
    [p0+c0, p1+c1, ..., p0+r0, p1+r1, ...] (chosen first, then rejected, in row order)."""
    if not rows:
        raise ValueError("collate_pairs got no rows")
    for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
        if key not in rows[0]:
            raise KeyError(
                f"pair rows need {key!r}: train on the output of `rayalign reference` "
                f"(or `rayalign prepare` with kind: pairs), not on raw pairs"
            )
    prompts = [_ids(r["prompt_ids"]) for r in rows]
    responses = [_ids(r["chosen_ids"]) for r in rows] + [_ids(r["rejected_ids"]) for r in rows]
    return prompts + prompts, responses


def _with_reference(batch: dict[str, torch.Tensor], rows: Sequence[dict]) -> dict[str, torch.Tensor]:
    batch["num_pairs"] = torch.tensor(len(rows), dtype=torch.long)
    if all(r.get(k) is not None for r in rows for k in REF_KEYS):
        for k in REF_KEYS:
            batch[k] = torch.tensor([float(r[k]) for r in rows], dtype=torch.float32)
    return batch


def collate_pairs(rows: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows with prompt_ids / chosen_ids / rejected_ids → the concatenated 2B-row padded batch."""
    prompts, responses = pair_sequences(rows)
    return _with_reference(collate_sequences(prompts, responses, pad_id), rows)


def first_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: indices of `lengths` grouped into bins of total ≤ capacity."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def pack_pairs(rows: Sequence[dict], pad_id: int, capacity: int | None = None) -> dict[str, torch.Tensor]:
    """The 2B sequences of B pairs packed into rows of `capacity` tokens (default: the longest sequence,
    so no row is wider than the padded batch and attention never costs more than padding would).

    Every sequence restarts its position ids at 0 and the model gets no attention mask: transformers
    then builds a document mask from the position resets, so packed sequences never see each other
    and each sequence's log-probs equal those of the padded layout. ``seq_index`` holds the sequence
    (0..2B−1) of every position (−1 on padding). The tail padding of a row is one more "document".
    ``logit_positions`` / ``target_labels`` / ``target_seq``: the positions that predict a response
    token (shared by the rows), for models that must be called whole (FSDP2, peft).
    """
    prompts, responses = pair_sequences(rows)
    if any(not p for p in prompts):
        raise ValueError("pack_pairs: a pair has an empty prompt_ids; packed sequences need ≥ 1 prompt token")
    lengths = [len(p) + len(y) for p, y in zip(prompts, responses)]
    width = capacity or max(lengths)
    if max(lengths) > width:
        raise ValueError(f"pack_pairs: a sequence of {max(lengths)} tokens exceeds the row capacity {width}")
    bins = first_fit(lengths, width)
    shape = (len(bins), width)
    input_ids, labels = torch.full(shape, pad_id, dtype=torch.long), torch.full(shape, IGNORE, dtype=torch.long)
    position_ids, seq_index = torch.zeros(shape, dtype=torch.long), torch.full(shape, -1, dtype=torch.long)
    for r, members in enumerate(bins):
        at = 0
        for i in members:
            p, y, n = prompts[i], responses[i], lengths[i]
            input_ids[r, at : at + n] = torch.tensor(p + y, dtype=torch.long)
            labels[r, at + len(p) : at + n] = torch.tensor(y, dtype=torch.long)
            position_ids[r, at : at + n] = torch.arange(n)
            seq_index[r, at : at + n] = i
            at += n
        position_ids[r, at:] = torch.arange(width - at)
    shifted = labels[:, 1:]
    keep = (shifted != IGNORE).any(dim=0).nonzero().squeeze(1)
    batch = {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "labels": labels,
        "seq_index": seq_index,
        "logit_positions": keep,
        "target_labels": shifted[:, keep],
        "target_seq": seq_index[:, 1:][:, keep],
        "pad_id": torch.tensor(pad_id, dtype=torch.long),
    }
    return _with_reference(batch, rows)


TREE_ROW_TOKENS = 512  # default row width of prefix-shared packing (a wider pair tree gets its own row)


def tree_pack_pairs(rows: Sequence[dict], pad_id: int, capacity: int | None = None) -> dict[str, torch.Tensor]:
    """The pairs as prefix trees (`objectives.prefix_tree`): each prompt once for its chosen and rejected
    response, and prefixes shared across the pairs of a row (a chat template's system prompt) once per
    row. Rows hold up to `capacity` tokens (default: `TREE_ROW_TOKENS`, or the largest pair's tree when
    wider). Per-sequence log-probs equal the padded layout's; the batch carries an explicit
    [rows, 1, T, T] ancestor mask instead of relying on position resets.
    """
    from rayalign.objectives.prefix_tree import group_rows, tree_tensors

    prompts, responses = pair_sequences(rows)
    if any(not p for p in prompts):
        raise ValueError("tree_pack_pairs: a pair has an empty prompt_ids; packed sequences need ≥ 1 prompt token")
    sequences = [p + y for p, y in zip(prompts, responses)]
    b = len(rows)
    pair_size = [len(sequences[i]) + len(sequences[b + i]) - len(prompts[i]) for i in range(b)]
    width = max(capacity or TREE_ROW_TOKENS, max(pair_size))
    # pairs with alike prompts side by side, so the rows' trees share the most
    order = sorted(range(b), key=lambda i: prompts[i])
    layout = group_rows([[i, b + i] for i in order], sequences, width)
    batch = tree_tensors(layout, sequences, [len(p) for p in prompts], pad_id)
    batch["pad_id"] = torch.tensor(pad_id, dtype=torch.long)
    return _with_reference(batch, rows)


def collate_pair_layout(rows: Sequence[dict], pad_id: int, pack: bool = True, share_prefix: bool = True) -> dict:
    """The training layout of a micro-batch of pairs (see `PreferenceObjective`): padded, packed, or
    prefix trees when those compute ≥ 10% fewer positions (rows × width) than plain packing."""
    if not pack:
        return collate_pairs(rows, pad_id)
    plain = pack_pairs(rows, pad_id)
    if not share_prefix:
        return plain
    tree = tree_pack_pairs(rows, pad_id)
    return tree if tree["input_ids"].numel() <= 0.9 * plain["input_ids"].numel() else plain


def pair_logps(
    model, batch: dict[str, torch.Tensor], selective: bool = True, chunked: bool = False
) -> tuple[torch.Tensor, ...]:
    """One forward over chosen and rejected together → (chosen, rejected, chosen_tokens, rejected_tokens).

    A bare HF model projects to the vocabulary only at scored positions (`scored_token_logps`); any
    other model (FSDP2, peft) is called whole with ``logits_to_keep`` = the positions (packed) or the
    trailing window (padded) that predict response tokens. Packed batches (`pack_pairs`) carry
    ``seq_index`` and no attention mask; padded ones (`collate_pairs`) an attention mask. ``chunked``
    (bare HF models): the projection and log-softmax run chunk by chunk (`projected_target_logps`), so
    no [tokens, V] logits are held: less memory, a second projection in backward.
    """
    if "target_index" in batch:
        logps, counts = _tree_logps(model, batch, selective, chunked)
    elif "seq_index" in batch:
        logps, counts = _packed_logps(model, batch, selective, chunked)
    elif selective and splittable_causal_lm(model):
        hidden = model.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state
        logps, counts = scored_token_logps(hidden, model.lm_head, batch["labels"], chunked=chunked)
    else:
        keep = int(batch["logits_to_keep"])  # one scalar per micro-batch, not per token
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep, use_cache=False
        )
        logps, counts = sequence_logps(out.logits, batch["labels"])
    b = logps.shape[0] // 2
    return logps[:b], logps[b:], counts[:b], counts[b:]


def _tree_logps(
    model, batch: dict[str, torch.Tensor], selective: bool, chunked: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    n = 2 * int(batch["num_pairs"])  # one scalar per micro-batch
    inputs = {
        "input_ids": batch["input_ids"],
        "position_ids": batch["position_ids"],
        "attention_mask": batch["attention_mask"],
        "use_cache": False,
    }
    if selective and splittable_causal_lm(model):
        hidden = model.model(**inputs).last_hidden_state
        scored = hidden[batch["score_rows"], batch["score_positions"]]
        if chunked:  # a position predicting two targets is projected twice (a prompt's last token)
            logps = projected_target_logps(scored[batch["target_index"]], model.lm_head, batch["target_labels"])
            return sequence_sums(logps, batch["target_seq"], n)
        logits = model.lm_head(scored)
    else:
        out = model(**inputs, logits_to_keep=batch["logit_positions"])
        logits = out.logits[batch["score_rows"], batch["score_columns"]]
    return sums_by_sequence(logits, batch["target_labels"], batch["target_seq"], n, position=batch["target_index"])


def _packed_logps(
    model, batch: dict[str, torch.Tensor], selective: bool, chunked: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    n = 2 * int(batch["num_pairs"])  # one scalar per micro-batch
    if selective and splittable_causal_lm(model):
        hidden = model.model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).last_hidden_state
        return scored_token_logps(hidden, model.lm_head, batch["labels"], batch["seq_index"], n, chunked)
    out = model(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        use_cache=False,
        logits_to_keep=batch["logit_positions"],
    )
    targets = batch["target_labels"]
    scored = targets != IGNORE
    return sums_by_sequence(out.logits[scored], targets[scored], batch["target_seq"][scored], n)


def check_params(name: str, fn, params: dict) -> dict:
    """Reject hyper-parameters the loss does not take, naming the allowed ones."""
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("lp", "kl")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        from rayalign.config import ConfigError

        raise ConfigError(
            f"objective {name!r}: unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(allowed) or '(none)'}"
        )
    return dict(params)


def lookup_loss(name: str) -> tuple[LossFn, bool]:
    if name not in PREFERENCE_LOSSES:
        from rayalign.config import ConfigError

        raise ConfigError(f"unknown preference loss {name!r}; available: {', '.join(sorted(PREFERENCE_LOSSES))}")
    return PREFERENCE_LOSSES[name]


class PreferenceObjective:
    """Any loss of `PREFERENCE_LOSSES` as a train-loop objective; the loss function is the only difference.

    ``pack`` (default on): the chosen and rejected sequences of the micro-batch are packed into rows
    instead of padded one per row (`collate_pairs`); ``share_prefix`` (default on): packed as prefix
    trees (`tree_pack_pairs`, each prompt and shared template prefix computed once) where that computes
    ≥ 10% fewer positions than plain packing (`pack_pairs`). The per-sequence log-probs, and so the
    loss, are the same in every layout. ``chunked_head`` (default off): the vocabulary projection and
    log-softmax run chunk by chunk (`projected_target_logps`), so no [tokens, vocabulary] logits are
    held for backward: less memory on long answers, one more projection per step.
    """

    model_class = "causal_lm"

    def __init__(
        self, name: str, pack: bool = True, share_prefix: bool = True, chunked_head: bool = False, **params: Any
    ):
        self.name = name
        self.pack, self.share_prefix, self.chunked_head = pack, share_prefix, chunked_head
        self.fn, self.needs_reference = lookup_loss(name)
        self.params = check_params(name, self.fn, params)

    def collate(self, rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
        return collate_pair_layout(rows, pad_id, self.pack, self.share_prefix)

    def count(self, batch: dict) -> torch.Tensor:
        return batch["num_pairs"].to(torch.float32)

    def reference_logps(self, batch: dict, ref_model=None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not self.needs_reference:
            return None, None
        if all(k in batch for k in REF_KEYS):
            return batch["ref_chosen_logp"], batch["ref_rejected_logp"]
        if ref_model is None:
            raise ValueError(
                f"objective {self.name!r} needs reference log-probs: the rows carry no "
                f"ref_chosen_logp/ref_rejected_logp and no reference model was given"
            )
        with torch.no_grad():
            ref_c, ref_r, _, _ = pair_logps(ref_model, batch, chunked=self.chunked_head)
        return ref_c, ref_r

    def loss(self, model, batch: dict, ref_model=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        chosen, rejected, n_c, n_r = pair_logps(model, batch, chunked=self.chunked_head)
        ref_c, ref_r = self.reference_logps(batch, ref_model)
        lp = PairLogps(chosen, rejected, ref_c, ref_r, n_c, n_r)
        per_pair, metrics = self.fn(lp, **self.params)
        sums = {k: v.sum() for k, v in metrics.items()}
        sums["logps_chosen"] = chosen.detach().sum()
        sums["logps_rejected"] = rejected.detach().sum()
        return per_pair.sum(), sums


class MixtureObjective(PreferenceObjective):
    """A weighted sum of preference losses (MPO-style), e.g.
    ``objective: {name: mixture, losses: [{name: dpo, weight: 0.8}, {name: bco_pair, weight: 0.2},
    {name: chosen_nll, weight: 1.0}]}``; each entry may carry its own hyper-parameters (``beta`` ...)."""

    def __init__(
        self,
        losses: Sequence[dict[str, Any]],
        pack: bool = True,
        share_prefix: bool = True,
        chunked_head: bool = False,
    ):
        from rayalign.config import ConfigError

        if not losses:
            raise ConfigError("objective 'mixture': give losses: [{name, weight, ...hyper-parameters}]")
        parts = []
        for i, spec in enumerate(losses):
            spec = dict(spec)
            if "name" not in spec:
                raise ConfigError(f"objective 'mixture': losses[{i}] has no name")
            name, weight = spec.pop("name"), float(spec.pop("weight", 1.0))
            fn, _ = lookup_loss(name)
            parts.append((name, weight, fn, check_params(name, fn, spec)))
        self.name = "mixture"
        self.pack, self.share_prefix, self.chunked_head = pack, share_prefix, chunked_head
        self.needs_reference = any(PREFERENCE_LOSSES[p[0]][1] for p in parts)
        self.fn = weighted_mixture
        self.params = {"parts": parts}


def _ensure_pad_id(model, pad_id: int) -> None:
    # HF sequence-classification heads pool at the rightmost non-pad token and refuse batches
    # when the config has no pad id; set it once (it is then saved with the checkpoint too).
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = pad_id


def sequence_rewards(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Scalar reward of every row: the head's output at the last real token, [rows]."""
    _ensure_pad_id(model, int(batch["pad_id"]))
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return out.logits[:, 0].float()


class RewardObjective:
    """Bradley–Terry reward model: a one-output sequence-classification head trained on pairs."""

    name = "reward"
    needs_reference = False
    model_class = "sequence_classification"

    def __init__(self, **params: Any):
        if params:
            from rayalign.config import ConfigError

            raise ConfigError(f"objective 'reward' takes no parameters, got {', '.join(sorted(params))}")

    def collate(self, rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
        return collate_pairs(rows, pad_id)

    def count(self, batch: dict) -> torch.Tensor:
        return batch["num_pairs"].to(torch.float32)

    def loss(self, model, batch: dict, ref_model=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rewards = sequence_rewards(model, batch)
        b = rewards.shape[0] // 2
        per_pair, metrics = bradley_terry(rewards[:b], rewards[b:])
        return per_pair.sum(), {k: v.sum() for k, v in metrics.items()}

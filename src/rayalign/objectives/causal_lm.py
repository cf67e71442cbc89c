"""The causal-LM objective (pretraining and assistant-only SFT) over packed rows.

Rows follow PACKED_SCHEMA (input_ids, labels, position_ids); the loss is the SUM of next-token
negative log-likelihoods over the target tokens, and `count` is the number of target tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rayalign.objectives.logps import IGNORE, at_least_fp32, projected_nll_sum, splittable_causal_lm


def pad_to(seqs: list[list[int]], value: int, length: int | None = None) -> torch.Tensor:
    n = length or max(len(s) for s in seqs)
    return torch.tensor([list(s) + [value] * (n - len(s)) for s in seqs], dtype=torch.long)


def token_nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token negative log-likelihoods: logits at t predict labels at t+1; -100 is skipped.

    The cross-entropy runs in fp32 (bf16 log-softmax over a 50k+ vocabulary loses digits).
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )


class CausalLMObjective:
    """Causal LM over packed rows (pretraining) or assistant-only SFT: the labels decide which.

    Rows follow PACKED_SCHEMA. The model gets `position_ids` and NO attention mask (and no cache):
    transformers then builds a document-masked causal mask from the position resets, so packed
    documents never attend to each other. Rows of unequal length are right-padded; the padding
    continues the position count (a separate "document") and carries label -100.

    ``chunked_head`` (default off; bare Hugging Face models): the vocabulary projection and the
    cross-entropy run chunk by chunk with their gradients formed in the same pass (`projected_nll_sum`),
    so the [targets, vocabulary] logits are never held: less memory, about the same arithmetic.
    """

    needs_reference = False
    model_class = "causal_lm"

    def __init__(self, name: str = "causal_lm", chunked_head: bool = False):
        self.name = name
        self.chunked_head = chunked_head

    def collate(self, rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
        n = max(len(r["input_ids"]) for r in rows)
        pos = [list(r["position_ids"]) + list(range(n - len(r["position_ids"]))) for r in rows]
        labels = pad_to([r["labels"] for r in rows], IGNORE, n)
        # Only positions whose NEXT token is a target need logits. The LM head over a 50k-word
        # vocabulary is a large share of a small model's compute and memory, and in SFT most
        # positions are prompt or padding. Indices are found here, on the CPU, so the loss never
        # syncs with the device; positions are shared by the rows of the micro-batch.
        shifted = labels[:, 1:]
        keep = (shifted != IGNORE).any(dim=0).nonzero().squeeze(1)
        return {
            "input_ids": pad_to([r["input_ids"] for r in rows], pad_id, n),
            "labels": labels,
            "position_ids": torch.tensor(pos, dtype=torch.long),
            "logit_positions": keep,
            "target_labels": shifted[:, keep],
        }

    def count(self, batch: dict) -> torch.Tensor:
        return (batch["labels"][:, 1:] != IGNORE).sum()

    def loss(self, model, batch: dict, ref_model=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.chunked_head and splittable_causal_lm(model):
            hidden = model.model(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
            ).last_hidden_state
            picked = hidden[:, batch["logit_positions"]]  # [B, K, H]
            return projected_nll_sum(
                picked.reshape(-1, picked.shape[-1]), model.lm_head, batch["target_labels"].reshape(-1)
            ), {}
        out = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            use_cache=False,
            logits_to_keep=batch["logit_positions"],
        )
        logits = at_least_fp32(out.logits)  # [B, K, V]: the kept positions only
        nll = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)),
            batch["target_labels"].reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
        return nll, {}

"""Preference accuracy of a trained policy or reward model on pair rows (held-in or held-out).

Policy: a pair counts as won when the implicit reward prefers the chosen response —
(log πθ − log πref)(y_w) > (log πθ − log πref)(y_l) when the rows carry reference log-probs, else the
length-normalised log-likelihood (SimPO/ORPO's reward). A tie (|margin| < `tie`, e.g. the untrained
policy equal to its reference) counts ½, so an untrained model scores ~0.5.
Reward model: a pair is won when r(x, y_w) > r(x, y_l).
"""

from __future__ import annotations

from pathlib import Path

import torch

from rayalign.objectives.pairs import REF_KEYS, collate_pairs, pair_logps, sequence_rewards


def _batches(rows: list[dict], size: int):
    for i in range(0, len(rows), size):
        yield rows[i:i + size]


def _won(margins: torch.Tensor, tie: float) -> torch.Tensor:
    return torch.where(margins.abs() < tie, torch.full_like(margins, 0.5), (margins > 0).to(margins.dtype))


@torch.inference_mode()
def preference_accuracy(model, rows: list[dict], pad_id: int, batch_size: int = 8, tie: float = 1e-4) -> dict:
    margins = []
    for chunk in _batches(rows, batch_size):
        batch = collate_pairs(chunk, pad_id)
        c, r, n_c, n_r = (t.double() for t in pair_logps(model, batch))
        if all(k in batch for k in REF_KEYS):
            margins.append((c - batch["ref_chosen_logp"].double()) - (r - batch["ref_rejected_logp"].double()))
        else:
            margins.append(c / n_c.clamp(min=1) - r / n_r.clamp(min=1))
    m = torch.cat(margins)
    return {"pairs": len(rows), "accuracy": float(_won(m, tie).mean()), "margin": float(m.mean())}


@torch.inference_mode()
def reward_accuracy(model, rows: list[dict], pad_id: int, batch_size: int = 8) -> dict:
    margins = []
    for chunk in _batches(rows, batch_size):
        rewards = sequence_rewards(model, collate_pairs(chunk, pad_id)).double()
        b = rewards.shape[0] // 2
        margins.append(rewards[:b] - rewards[b:])
    m = torch.cat(margins)
    return {"pairs": len(rows), "accuracy": float((m > 0).double().mean()), "margin": float(m.mean())}


def load_rows(dataset: str | Path, limit: int | None = None) -> list[dict]:
    from rayalign.data.shards import read_dataset

    table = read_dataset(dataset)
    if limit is not None:
        table = table.slice(0, min(limit, table.num_rows))
    return table.to_pylist()


def load_policy(checkpoint: str, base: str, adapter: bool):
    """A trained policy for evaluation: a full HF folder, or `base` plus the adapter folder."""
    from rayalign.models.loader import load_model

    if adapter:
        return load_model(base, dtype="fp32", adapter=checkpoint)
    return load_model(checkpoint, dtype="fp32")


def load_reward_model(checkpoint: str):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=1)
    return model.eval()

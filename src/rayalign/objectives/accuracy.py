"""Preference accuracy of a policy or reward model on pair rows (held-in or held-out), no gradients.

Shared by the `prefer` / `reward` stages (run where training runs) and the `eval` stage.

Policy: a pair counts as won when the implicit reward prefers the chosen response —
(log πθ − log πref)(y_w) > (log πθ − log πref)(y_l) when the rows carry reference log-probs, else the
length-normalised log-likelihood (SimPO/ORPO's reward). A tie (|margin| < `tie`, e.g. the untrained
policy equal to its reference) counts ½, so an untrained model scores ~0.5.
Reward model: a pair is won when r(x, y_w) > r(x, y_l).

`objective_metrics` is the generic form: the objective's own loss and metric sums (``accuracy``,
``margins``, ...) over rows, divided by the objective's count, as a trainer's evaluation pass would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from rayalign.objectives.pairs import REF_KEYS, collate_pairs, pair_logps, sequence_rewards


def _batches(rows: list[dict], size: int) -> Iterator[list[dict]]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def _won(margins: torch.Tensor, tie: float) -> torch.Tensor:
    return torch.where(margins.abs() < tie, torch.full_like(margins, 0.5), (margins > 0).to(margins.dtype))


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def preference_accuracy(model, rows: list[dict], pad_id: int, batch_size: int = 8, tie: float = 1e-4) -> dict:
    margins = []
    device = _device(model)
    for chunk in _batches(rows, batch_size):
        batch = {k: v.to(device) for k, v in collate_pairs(chunk, pad_id).items()}
        c, r, n_c, n_r = (t.double() for t in pair_logps(model, batch))
        if all(k in batch for k in REF_KEYS):
            margins.append((c - batch["ref_chosen_logp"].double()) - (r - batch["ref_rejected_logp"].double()))
        else:
            margins.append(c / n_c.clamp(min=1) - r / n_r.clamp(min=1))
    m = torch.cat(margins).cpu()
    return {"pairs": len(rows), "accuracy": float(_won(m, tie).mean()), "margin": float(m.mean())}


@torch.inference_mode()
def reward_accuracy(model, rows: list[dict], pad_id: int, batch_size: int = 8) -> dict:
    margins = []
    device = _device(model)
    for chunk in _batches(rows, batch_size):
        rewards = sequence_rewards(model, {k: v.to(device) for k, v in collate_pairs(chunk, pad_id).items()}).double()
        b = rewards.shape[0] // 2
        margins.append(rewards[:b] - rewards[b:])
    m = torch.cat(margins).cpu()
    return {"pairs": len(rows), "accuracy": float((m > 0).double().mean()), "margin": float(m.mean())}


@torch.inference_mode()
def objective_metrics(
    model, objective: Any, rows: list[dict], pad_id: int, batch_size: int = 8, ref_model=None
) -> dict[str, float]:
    """The objective's ``loss`` and metrics averaged over `rows` (sums ÷ the objective's count)."""
    device = _device(model)
    total, count = 0.0, 0.0
    sums: dict[str, float] = {}
    for chunk in _batches(rows, batch_size):
        batch = {k: v.to(device) for k, v in objective.collate(chunk, pad_id).items()}
        loss, metrics = objective.loss(model, batch, ref_model)
        total += float(loss)
        count += float(objective.count(batch))
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    n = max(count, 1.0)
    return {"loss": total / n, **{k: v / n for k, v in sums.items()}, "count": count}


def load_rows(dataset: str | Path, limit: int | None = None) -> list[dict]:
    """The first `limit` rows of a dataset folder (parquet shards + manifest) as dicts."""
    from rayalign.data.shards import read_dataset

    table = read_dataset(dataset)
    if limit is not None:
        table = table.slice(0, min(limit, table.num_rows))
    return table.to_pylist()


def load_reward_model(checkpoint: str):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=1)
    return model.eval()

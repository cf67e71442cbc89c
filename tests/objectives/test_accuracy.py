"""The no-grad evaluation pass over pair rows: the objective's own metric sums ÷ its count."""

from __future__ import annotations

import pytest
import torch

from rayalign.objectives import get_objective
from rayalign.objectives.accuracy import objective_metrics, preference_accuracy
from rayalign.objectives.pairs import collate_pairs, pair_logps


def test_objective_metrics_and_accuracy_hand_worked(tiny_model_path, tokenizer):
    """5 pairs whose reference log-probs are the policy's own minus (0.5 chosen, −0.25 rejected): every
    log-ratio margin is 0.5 + 0.25 = 0.75 > 0 → accuracy 1; APO-zero per pair (1 − σ(0.05)) + σ(−0.025) =
    0.487503 + 0.493750 = 0.981253; margins β·0.75 = 0.075; count 5. Batches of 2 (2 + 2 + 1) change nothing."""
    from transformers import AutoModelForCausalLM

    from rayalign.data.tokenize import tokenize_pair

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    rows = [
        tokenize_pair(tokenizer, [{"role": "user", "content": q}], c, r)
        for q, c, r in [
            ("What is 2+2?", "4", "Five."),
            ("Sky colour?", "Blue.", "Green"),
            ("Say hi.", "Hi!", "No."),
            ("Count to two.", "1, 2.", "2, 1."),
            ("Capital of France?", "Paris.", "Rome, I think."),
        ]
    ]
    with torch.no_grad():
        c, r, _, _ = pair_logps(model, collate_pairs(rows, tokenizer.pad_token_id))
    rows = [
        {**row, "ref_chosen_logp": float(c[i]) - 0.5, "ref_rejected_logp": float(r[i]) + 0.25}
        for i, row in enumerate(rows)
    ]
    m = objective_metrics(model, get_objective("apo_zero", beta=0.1), rows, tokenizer.pad_token_id, batch_size=2)
    assert m["count"] == 5.0
    assert m["accuracy"] == pytest.approx(1.0)
    assert m["loss"] == pytest.approx(0.981253, abs=1e-4)
    assert m["margins"] == pytest.approx(0.075, abs=1e-4)
    acc = preference_accuracy(model, rows, tokenizer.pad_token_id, batch_size=2)
    assert acc["pairs"] == 5 and acc["accuracy"] == 1.0 and acc["margin"] == pytest.approx(0.75, abs=1e-3)

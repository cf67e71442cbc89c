"""Unit tests of the causal-LM objective: collation, counting, the summed next-token loss."""

from __future__ import annotations

import math

import pytest
import torch

from rayalign.objectives import OBJECTIVES, get_objective
from rayalign.objectives.causal_lm import CausalLMObjective, token_nll_sum


def test_collate_pads_rows_and_continues_positions():
    rows = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "position_ids": [0, 1, 2]},
        {"input_ids": [8], "labels": [-100], "position_ids": [0]},
    ]
    b = CausalLMObjective().collate(rows, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100]]
    # the padding is its own "document": positions restart, so it never attends to real tokens
    assert b["position_ids"].tolist() == [[0, 1, 2], [0, 0, 1]]
    # targets are counted after the shift (label at t is predicted from t-1): 6 and 7 → 2
    assert CausalLMObjective().count(b).item() == 2
    # logits are kept only where some row's next token is a target: positions 0 (→6) and 1 (→7)
    assert b["logit_positions"].tolist() == [0, 1]
    assert b["target_labels"].tolist() == [[6, 7], [-100, -100]]


def test_token_nll_sum_hand_worked():
    """Vocab 2, logits equal at every position → each target costs ln 2.

    labels [-100, 1, -100, 0]: after the shift the targets are positions 1 and 3 → 2·ln 2.
    """
    logits = torch.zeros(1, 4, 2)
    labels = torch.tensor([[-100, 1, -100, 0]])
    assert token_nll_sum(logits, labels).item() == pytest.approx(2 * math.log(2), abs=1e-7)
    # a confident correct prediction at position 0 for target 1 costs ~0
    logits[0, 0, 1] = 50.0
    assert token_nll_sum(logits, labels).item() == pytest.approx(math.log(2), abs=1e-6)


def test_registry_and_unknown_name():
    assert {"sft", "pretrain"} <= set(OBJECTIVES)
    assert get_objective("pretrain").name == "pretrain"
    from rayalign.config import ConfigError

    with pytest.raises(ConfigError, match="unknown objective 'nope'"):
        get_objective("nope")

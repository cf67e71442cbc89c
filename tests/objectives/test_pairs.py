"""Sequence log-probs and the one-forward pair batch, checked against independent computations."""

from __future__ import annotations

import math

import pytest
import torch

from rayalign.objectives.logps import IGNORE, sequence_logps
from rayalign.objectives.pairs import (
    PreferenceObjective,
    RewardObjective,
    collate_pair_layout,
    collate_pairs,
    pack_pairs,
    pair_logps,
    tree_pack_pairs,
)

ROWS = [
    {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10]},
    {"prompt_ids": [11], "chosen_ids": [12, 13, 14], "rejected_ids": [15, 16]},
]


def test_sequence_logps_hand_worked():
    """Vocab 2, one row [a, b, a] with labels [-100, 1, 0] (the first token is never predicted).

    Position 0 logits (0, 0) → log p(token 1) = log 1/2 = −0.693147.
    Position 1 logits (log 3, 0) → p = (3/4, 1/4) → log p(token 0) = log 3/4 = −0.287682.
    Sum −0.980829 over 2 target tokens; position 2's logits predict nothing.
    """
    logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[IGNORE, 1, 0]])
    logp, n = sequence_logps(logits, labels)
    assert float(logp[0]) == pytest.approx(math.log(0.5) + math.log(0.75), abs=1e-6)
    assert int(n[0]) == 2


def test_sequence_logps_with_trailing_window_equals_full():
    """Logits for only the last K positions give the same sums when the targets lie inside the window."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    labels = torch.tensor([[IGNORE, IGNORE, IGNORE, 4, 5, IGNORE], [IGNORE, IGNORE, 1, 2, 3, 4]])
    full, n_full = sequence_logps(logits, labels)
    # the earliest target is label 2, predicted by position 1: the last 5 positions suffice
    part, n_part = sequence_logps(logits[:, -5:], labels)
    assert torch.allclose(full, part) and torch.equal(n_full, n_part)


def test_collate_concatenates_chosen_then_rejected():
    """B = 2 pairs → 4 rows: [p0+c0, p1+c1, p0+r0, p1+r1], width max(5, 4, 4, 3) = 5, pad id 0."""
    b = collate_pairs(ROWS, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9], [11, 12, 13, 14, 0], [5, 6, 7, 10, 0], [11, 15, 16, 0, 0]]
    assert b["labels"].tolist() == [
        [IGNORE, IGNORE, IGNORE, 8, 9],
        [IGNORE, 12, 13, 14, IGNORE],
        [IGNORE, IGNORE, IGNORE, 10, IGNORE],
        [IGNORE, 15, 16, IGNORE, IGNORE],
    ]
    assert b["attention_mask"].sum(1).tolist() == [5, 4, 4, 3]
    # the shortest prompt has 1 token: logits are needed from position 0 → all 5 positions
    assert int(b["logits_to_keep"]) == 5
    assert "ref_chosen_logp" not in b
    with_ref = collate_pairs([{**r, "ref_chosen_logp": -1.5, "ref_rejected_logp": -2.5} for r in ROWS], pad_id=0)
    assert with_ref["ref_rejected_logp"].tolist() == [-2.5, -2.5]


def test_collate_names_the_missing_column():
    with pytest.raises(KeyError, match="prompt_ids"):
        collate_pairs([{"prompt": "hi", "chosen": "a", "rejected": "b"}], pad_id=0)


def _one_by_one(model, prompt: list[int], response: list[int]) -> float:
    """Reference implementation: one unpadded sequence, full log-softmax, sum over the response."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(float(logp[len(prompt) - 1 + j, tok]) for j, tok in enumerate(response))


def test_pair_logps_one_forward_matches_sequences_scored_alone(tiny_model_path, tokenizer):
    from transformers import AutoModelForCausalLM

    from rayalign.data.tokenize import tokenize_pair

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    rows = [
        tokenize_pair(tokenizer, [{"role": "user", "content": q}], c, r)
        for q, c, r in [
            ("What is 2+2?", "4", "It is five, I think, or maybe six."),
            ("Name a colour of the sky on a clear day, please.", "Blue.", "Green"),
        ]
    ]
    batch = collate_pairs(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        chosen, rejected, n_c, n_r = pair_logps(model, batch)  # head only on the scored positions
        whole = pair_logps(model, batch, selective=False)  # the FSDP/peft path: whole model, logits window
    assert torch.allclose(chosen, whole[0], atol=1e-4) and torch.allclose(rejected, whole[1], atol=1e-4)
    for i, row in enumerate(rows):
        assert float(chosen[i]) == pytest.approx(_one_by_one(model, row["prompt_ids"], row["chosen_ids"]), abs=1e-4)
        assert float(rejected[i]) == pytest.approx(_one_by_one(model, row["prompt_ids"], row["rejected_ids"]), abs=1e-4)
        assert int(n_c[i]) == len(row["chosen_ids"]) and int(n_r[i]) == len(row["rejected_ids"])


def test_objective_uses_row_reference_or_reference_model(tiny_model_path, tokenizer):
    """With ref log-probs equal to the policy's own, every log-ratio is 0: APO-zero = (1 − ½) + ½ = 1 per pair.

    The same holds with the policy passed as its own reference model (the on-the-fly path).
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    obj = PreferenceObjective("apo_zero", beta=0.1)
    batch = obj.collate(ROWS, pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        c, r, _, _ = pair_logps(model, batch)
        on_the_fly, m1 = obj.loss(model, batch, ref_model=model)
    rows = [{**row, "ref_chosen_logp": float(c[i]), "ref_rejected_logp": float(r[i])} for i, row in enumerate(ROWS)]
    with torch.no_grad():
        precomputed, m2 = obj.loss(model, obj.collate(rows, pad_id=tokenizer.pad_token_id))
    assert float(obj.count(batch)) == 2.0
    assert float(on_the_fly) == pytest.approx(2.0, abs=1e-6)
    assert float(precomputed) == pytest.approx(2.0, abs=1e-6)
    assert float(m1["accuracy"]) == 0.0 and float(m2["margins"]) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="reference"):
        obj.loss(model, batch)


def test_unknown_objective_parameter_is_named():
    from rayalign.config import ConfigError

    with pytest.raises(ConfigError, match=r"gamma.*allowed: beta"):
        PreferenceObjective("dpo", gamma=1.0)
    with pytest.raises(ConfigError, match="available"):
        PreferenceObjective("nope")
    with pytest.raises(ConfigError, match="no parameters"):
        RewardObjective(beta=0.1)


def test_pack_pairs_layout_hand_worked():
    """4 sequences of lengths p0+c0 = 5, p1+c1 = 4, p0+r0 = 4, p1+r1 = 3; capacity = 5 (the longest).

    First-fit decreasing: [5] → row 0 full; 4 → row 1 (room 1); 4 → row 2 (room 1); 3 → row 3 (room 2).
    The longest-first order is stable: seq 1 (p1+c1) before seq 2 (p0+r0). Padding restarts its positions.
    """
    b = pack_pairs(ROWS, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9], [11, 12, 13, 14, 0], [5, 6, 7, 10, 0], [11, 15, 16, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 0], [0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    assert b["seq_index"].tolist() == [[0] * 5, [1] * 4 + [-1], [2] * 4 + [-1], [3] * 3 + [-1, -1]]
    assert int(b["num_pairs"]) == 2 and "attention_mask" not in b
    # a wider row takes several sequences: capacity 9 → [p0+c0 (5), p1+c1 (4)], [p0+r0 (4), p1+r1 (3), pad 2]
    w = pack_pairs(ROWS, pad_id=0, capacity=9)
    assert w["input_ids"].tolist() == [[5, 6, 7, 8, 9, 11, 12, 13, 14], [5, 6, 7, 10, 11, 15, 16, 0, 0]]
    assert w["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3], [0, 1, 2, 3, 0, 1, 2, 0, 1]]
    assert w["labels"].tolist() == [
        [IGNORE, IGNORE, IGNORE, 8, 9, IGNORE, 12, 13, 14],
        [IGNORE, IGNORE, IGNORE, 10, IGNORE, 15, 16, IGNORE, IGNORE],
    ]
    with pytest.raises(ValueError, match="capacity"):
        pack_pairs(ROWS, pad_id=0, capacity=4)


def _tokenised_pairs(tokenizer) -> list[dict]:
    from rayalign.data.tokenize import tokenize_pair

    return [
        tokenize_pair(tokenizer, [{"role": "user", "content": q}], c, r)
        for q, c, r in [
            ("What is 2+2?", "4", "It is five, I think, or maybe six."),
            ("Name a colour of the sky on a clear day, please.", "Blue.", "Green"),
            ("Say hi.", "Hi! How can I help you today?", "No."),
            ("Count to three.", "1, 2, 3.", "1, 2, 4, 3, 5 and so on, forever."),
        ]
    ]


@pytest.mark.parametrize("selective", [True, False], ids=["head-at-scored-positions", "whole-model"])
def test_packed_pairs_equal_padded_pairs(tiny_model_path, tokenizer, selective):
    """The same 4 pairs, padded (8 rows) vs packed (rows of the longest length, and rows of 3× that):
    per-sequence log-probs, token counts, the DPO loss and its gradient agree to ≤ 1e-5.

    The model runs in fp64 so the comparison sees the layouts, not fp32 rounding of sums near −200
    (in fp32 the two agree to ~2e-5 absolute, ~1e-7 relative).
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float64).eval()
    rows = _tokenised_pairs(tokenizer)
    padded = collate_pairs(rows, tokenizer.pad_token_id)
    longest = max(len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in rows)
    wide = pack_pairs(rows, tokenizer.pad_token_id, capacity=3 * longest)
    assert wide["input_ids"].shape[0] < padded["input_ids"].shape[0]  # several sequences share a row
    with torch.no_grad():
        want = pair_logps(model, padded, selective=selective)
        for packed in (pack_pairs(rows, tokenizer.pad_token_id), wide):
            got = pair_logps(model, packed, selective=selective)
            for a, b in zip(want[:2], got[:2]):
                assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()
            assert torch.equal(want[2], got[2]) and torch.equal(want[3], got[3])
    ref = [
        {**r, "ref_chosen_logp": float(want[0][i]) - 0.5, "ref_rejected_logp": float(want[1][i]) + 0.25}
        for i, r in enumerate(rows)
    ]
    losses, grads = [], []
    for pack in (False, True):
        obj = PreferenceObjective("dpo", beta=0.1, pack=pack)
        model.zero_grad()
        loss, metrics = obj.loss(model, obj.collate(ref, tokenizer.pad_token_id))
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append(model.lm_head.weight.grad.clone())
        assert float(metrics["accuracy"]) == 4.0  # margins 0.5 + 0.25 > 0 for every pair
    assert losses[0] == pytest.approx(4 * -math.log(1 / (1 + math.exp(-0.075))), abs=1e-5)  # −log σ(0.1·0.75) × 4
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_tree_pack_pairs_layout_hand_worked():
    """Sequences p0+c0 = [5 6 7 8 9], p0+r0 = [5 6 7 10], p1+c1 = [11 12 13 14], p1+r1 = [11 15 16].

    One row (default capacity): pair 0's tree [5 6 7 8 9 10] (10 hangs under 7, depth 3), then pair
    1's [11 12 13 14 15 16] (15 under 11, depth 1): 12 positions instead of 16. Scored: the position
    of each response token's parent predicts it; the prompt's last token (slot 2) predicts both 8
    and 10, so 8 targets read 6 distinct positions [2 3 6 7 8 10].
    """
    b = tree_pack_pairs(ROWS, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3, 0, 1, 2, 3, 1, 2]]
    mask = b["attention_mask"][0, 0]
    assert mask[5].nonzero().squeeze(1).tolist() == [0, 1, 2, 5]  # 10 sees its prompt, not the chosen 8 9
    assert mask[11].nonzero().squeeze(1).tolist() == [6, 10, 11]
    assert mask[9].nonzero().squeeze(1).tolist() == [6, 7, 8, 9]
    assert b["score_positions"].tolist() == [2, 3, 6, 7, 8, 10] and b["score_rows"].tolist() == [0] * 6
    assert b["target_labels"].tolist() == [8, 9, 10, 12, 13, 14, 15, 16]
    assert b["target_seq"].tolist() == [0, 0, 2, 1, 1, 1, 3, 3]  # chosen i = i, rejected i = 2 + i
    assert b["target_index"].tolist() == [0, 1, 0, 2, 3, 4, 2, 5]
    assert int(b["num_pairs"]) == 2
    # capacity 8: pair 1 would make the row 12 positions wide, so it starts a second row (pad id 0)
    w = tree_pack_pairs(ROWS, pad_id=0, capacity=8)
    assert w["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]]
    assert w["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3], [0, 1, 2, 3, 1, 2]]
    assert w["score_rows"].tolist() == [0, 0, 1, 1, 1, 1] and w["score_positions"].tolist() == [2, 3, 0, 1, 2, 4]
    with pytest.raises(ValueError, match="empty prompt_ids"):
        tree_pack_pairs([{**ROWS[0], "prompt_ids": []}], pad_id=0)


def test_tree_pack_pads_rows_and_shares_a_template_prefix():
    """Three pairs with the same 3-token system prefix [1 2 3]: the row holds it once; a capacity of
    12 splits them after the second pair (11 positions; the third would make 14): rows of 11 and 6
    positions, the second padded to 11 (padding sees only itself)."""
    rows = [
        {"prompt_ids": [1, 2, 3, 20], "chosen_ids": [30, 31], "rejected_ids": [32]},
        {"prompt_ids": [1, 2, 3, 21], "chosen_ids": [33], "rejected_ids": [34, 35]},
        {"prompt_ids": [1, 2, 3, 22], "chosen_ids": [36], "rejected_ids": [37]},
    ]
    one = tree_pack_pairs(rows, pad_id=0)
    assert one["input_ids"].shape == (1, 3 + 4 + 4 + 3)  # prefix once, then each pair's own tokens
    two = tree_pack_pairs(rows, pad_id=0, capacity=12)
    assert two["input_ids"].tolist() == [[1, 2, 3, 20, 30, 31, 32, 21, 33, 34, 35], [1, 2, 3, 22, 36, 37] + [0] * 5]
    assert two["attention_mask"][1, 0, 10].nonzero().squeeze(1).tolist() == [10]
    assert two["attention_mask"][1, 0, 5].nonzero().squeeze(1).tolist() == [0, 1, 2, 3, 5]
    # 14 positions vs plain packing's 6 rows × 7 (the longest sequence): the tree layout is chosen
    assert collate_pair_layout(rows, pad_id=0)["input_ids"].shape == (1, 14)
    assert "seq_index" in collate_pair_layout(rows, pad_id=0, share_prefix=False)
    assert "attention_mask" in collate_pair_layout(rows, pad_id=0, pack=False)


@pytest.mark.parametrize("selective", [True, False], ids=["head-at-scored-positions", "whole-model"])
@pytest.mark.parametrize("capacity", [None, 40], ids=["one-row", "rows-of-40"])
def test_tree_packed_pairs_equal_padded_pairs(tiny_model_path, tokenizer, selective, capacity):
    """The 4 tokenised pairs as prefix trees vs padded: per-sequence log-probs ≤ 1e-5, equal token
    counts, and the DPO loss and the gradient of every parameter ≤ 1e-5 (fp64, as above)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float64).eval()
    rows = _tokenised_pairs(tokenizer)
    padded = collate_pairs(rows, tokenizer.pad_token_id)
    tree = tree_pack_pairs(rows, tokenizer.pad_token_id, capacity=capacity)
    # 138 positions in one row, or 236 in rows of ≤ 40 tokens padded to the widest, vs 8 × 55 padded
    assert tree["input_ids"].numel() == (138 if capacity is None else 236) and padded["input_ids"].numel() == 440
    with torch.no_grad():
        want, got = pair_logps(model, padded, selective=selective), pair_logps(model, tree, selective=selective)
    for a, b in zip(want[:2], got[:2]):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()
    assert torch.equal(want[2], got[2]) and torch.equal(want[3], got[3])
    ref = [{**r, "ref_chosen_logp": -40.0 + i, "ref_rejected_logp": -41.0} for i, r in enumerate(rows)]
    obj = PreferenceObjective("dpo", beta=0.1)
    losses, grads = [], []
    for batch in (collate_pairs(ref, tokenizer.pad_token_id), tree_pack_pairs(ref, tokenizer.pad_token_id, capacity)):
        model.zero_grad()
        loss, _ = obj.loss(model, batch)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append([p.grad.clone() for p in model.parameters()])
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    for g0, g1 in zip(*grads):
        assert torch.allclose(g0, g1, atol=1e-5, rtol=0)

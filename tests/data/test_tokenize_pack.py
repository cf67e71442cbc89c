"""Assistant-only masks on hand-built chats; packing that never crosses documents."""

from __future__ import annotations

import pytest
import torch

from rayalign.data.packing import first_fit_decreasing, pack, packing_efficiency
from rayalign.data.tokenize import IGNORE, tokenize_chat, tokenize_pair, tokenize_text


def labelled_text(tok, t) -> list[str]:
    """Decode each maximal run of labelled tokens."""
    runs, cur = [], []
    for i, lab in zip(t.input_ids, t.labels):
        if lab != IGNORE:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


def test_single_turn_mask(tokenizer):
    t = tokenize_chat(tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"}])
    # only the reply and its end-of-turn marker are targets; the default system turn, the user turn and the
    # "<|im_start|>assistant\n" header are not
    assert labelled_text(tokenizer, t) == ["Hello there!<|im_end|>\n"]
    assert tokenizer.decode(t.input_ids).startswith("<|im_start|>system\n")


def test_multi_turn_mask_with_system(tokenizer):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6, of course."},
    ]
    t = tokenize_chat(tokenizer, msgs)
    assert labelled_text(tokenizer, t) == ["4<|im_end|>\n", "6, of course.<|im_end|>\n"]
    assert tokenizer.decode(t.input_ids) == tokenizer.apply_chat_template(msgs, tokenize=False)


def test_corpus_text_gets_eos(tokenizer):
    t = tokenize_text(tokenizer, "Plain text.")
    assert t.input_ids[-1] == tokenizer.eos_token_id and t.labels == t.input_ids


def test_pair_tokens_share_the_prompt(tokenizer):
    p = tokenize_pair(tokenizer, [{"role": "user", "content": "Q"}], "Yes.", "No.")
    assert tokenizer.decode(p["chosen_ids"]) == "Yes.<|im_end|>\n"
    assert tokenizer.decode(p["rejected_ids"]) == "No.<|im_end|>\n"
    assert tokenizer.decode(p["prompt_ids"]).endswith("<|im_start|>assistant\n")


def test_first_fit_decreasing():
    # lengths 6,5,4,3,2 into capacity 8 → [6,2] [5,3] [4]: 3 bins (greedy in order would need 4)
    assert first_fit_decreasing([6, 5, 4, 3, 2], 8) == [[0, 4], [1, 3], [2]]
    with pytest.raises(ValueError, match="more than the packing length"):
        first_fit_decreasing([9], 8)


def test_pack_layout(tokenizer):
    a = tokenize_text(tokenizer, "one two")
    b = tokenize_text(tokenizer, "three")
    rows = pack([a, b], seq_len=len(a) + len(b) + 3, pad_id=0, ids=["a", "b"])
    assert len(rows) == 1
    r = rows[0]
    assert r.seq_lens == [len(a), len(b)] and r.doc_ids == ["a", "b"]
    assert r.position_ids == list(range(len(a))) + list(range(len(b))) + [0, 1, 2]
    assert r.labels[0] == IGNORE and r.labels[len(a)] == IGNORE  # no target predicts across documents
    assert r.labels[-3:] == [IGNORE] * 3
    assert packing_efficiency(rows, len(r.input_ids)) == pytest.approx((len(a) + len(b)) / len(r.input_ids))


def _token_loss_sum(model, input_ids, labels, position_ids=None):
    out = model(input_ids=input_ids, position_ids=position_ids, use_cache=False)
    logits = out.logits[:, :-1].float()
    tgt = labels[:, 1:]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), ignore_index=IGNORE, reduction="sum"
    ), int((tgt != IGNORE).sum())


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked(tokenizer, attn):
    """Loss over one packed row = token-weighted mean of the same samples' losses run one by one (≤ 1e-5)."""
    from rayalign.models.loader import load_model

    model = load_model("tiny-random:llama", attn_implementation=attn)
    chats = [
        [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
        [
            {"role": "user", "content": "Say hi"},
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "Again"},
            {"role": "assistant", "content": "Hi again!"},
        ],
        [{"role": "user", "content": "Count to three"}, {"role": "assistant", "content": "One, two, three."}],
    ]
    samples = [tokenize_chat(tokenizer, c) for c in chats]
    with torch.no_grad():
        total, n = 0.0, 0
        for s in samples:
            loss, k = _token_loss_sum(model, torch.tensor([s.input_ids]), torch.tensor([s.labels]))
            total, n = total + loss, n + k
        rows = pack(samples, seq_len=sum(len(s) for s in samples) + 5, pad_id=tokenizer.pad_token_id)
        assert len(rows) == 1
        r = rows[0]
        packed, k = _token_loss_sum(
            model, torch.tensor([r.input_ids]), torch.tensor([r.labels]), torch.tensor([r.position_ids])
        )
    assert k == n
    assert abs(packed.item() / k - total.item() / n) <= 1e-5
    # and without position resets the documents would leak into each other: the loss changes
    with torch.no_grad():
        leaky, _ = _token_loss_sum(model, torch.tensor([r.input_ids]), torch.tensor([r.labels]))
    assert abs(leaky.item() / k - total.item() / n) > 1e-4


def test_an_open_side_is_a_prefix_without_the_end_of_turn(tokenizer):
    """A side marked open (an answer cut off at the sampling budget) is tokenised as the same answer's
    ids with the end-of-turn dropped; `pair_ids` reads the flags off a pairs row."""
    from rayalign.data.tokenize import pair_ids

    prompt = [{"role": "user", "content": "Q"}]
    closed = tokenize_pair(tokenizer, prompt, "Yes, it is the", "No.")
    p = tokenize_pair(tokenizer, prompt, "Yes, it is the", "No.", open_ends=(True, False))
    assert tokenizer.decode(p["chosen_ids"]) == "Yes, it is the"
    assert p["chosen_ids"] == closed["chosen_ids"][: len(p["chosen_ids"])]
    assert tokenizer.decode(closed["chosen_ids"][len(p["chosen_ids"]) :]) == "<|im_end|>\n"
    assert p["rejected_ids"] == closed["rejected_ids"] and p["prompt_ids"] == closed["prompt_ids"]
    row = {"prompt": prompt, "chosen": "Yes.", "rejected": "No, it is the ", "rejected_open": True}
    q = pair_ids(tokenizer, row)
    assert (tokenizer.decode(q["chosen_ids"]), tokenizer.decode(q["rejected_ids"])) == (
        "Yes.<|im_end|>\n",
        "No, it is the",
    )

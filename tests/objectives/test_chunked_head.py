"""The chunked projection + log-softmax (`projected_target_logps`, `projected_nll_sum`) against the
plain path: finite-difference gradients (gradcheck, fp64), the unchunked log-softmax, and whole
objectives (SFT, DPO in every pair layout) on a tiny model, values and every parameter's gradient."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from rayalign.objectives.causal_lm import CausalLMObjective
from rayalign.objectives.logps import IGNORE, projected_nll_sum, projected_target_logps
from rayalign.objectives.pairs import PreferenceObjective, collate_pair_layout


def _head(vocab: int = 11, width: int = 5, bias: bool = True) -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(width, vocab, bias=bias).double()


def test_hand_worked_uniform_logits():
    """Zero weights → uniform over 4 words: every target costs ln 4; the ignored row costs nothing."""
    head = torch.nn.Linear(3, 4, bias=False)
    torch.nn.init.zeros_(head.weight)
    hidden = torch.randn(5, 3)
    targets = torch.tensor([0, 3, IGNORE, 1, 2])
    assert projected_nll_sum(hidden, head, targets, chunk=2).item() == pytest.approx(4 * math.log(4), abs=1e-6)
    got = projected_target_logps(hidden, head, targets.clamp(min=0), chunk=2)
    assert torch.allclose(got, torch.full((5,), -math.log(4)), atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_gradients_match_finite_differences(chunk):
    head = _head()
    hidden = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (7,))
    with_ignored = targets.clone()
    with_ignored[[2, 5]] = IGNORE

    def logps(h, w, b):  # a Linear's fields, as plain tensors gradcheck can perturb
        return projected_target_logps(h, SimpleNamespace(weight=w, bias=b, out_features=11), targets, chunk=chunk)

    def nll(h, w, b):
        return projected_nll_sum(h, SimpleNamespace(weight=w, bias=b, out_features=11), with_ignored, chunk=chunk)

    w = head.weight.detach().clone().requires_grad_(True)
    b = head.bias.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(logps, (hidden, w, b))
    assert torch.autograd.gradcheck(nll, (hidden, w, b))
    # and the values are the plain log-softmax's
    plain = torch.log_softmax(hidden @ w.T + b, -1)
    assert torch.allclose(logps(hidden, w, b), plain.gather(1, targets[:, None]).squeeze(1), atol=1e-12)
    want = F.cross_entropy(hidden @ w.T + b, with_ignored, ignore_index=IGNORE, reduction="sum")
    assert nll(hidden, w, b).item() == pytest.approx(want.item(), abs=1e-12)


def test_bf16_autocast_matches_the_plain_head_under_autocast():
    """Under bf16 autocast the chunked path multiplies in bf16 like `head` would, log-softmax in fp32."""
    torch.manual_seed(1)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(9, 16, requires_grad=True)
    targets = torch.randint(0, 50, (9,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = projected_target_logps(hidden, head, targets, chunk=4)
        want = torch.log_softmax(head(hidden).float(), -1).gather(1, targets[:, None]).squeeze(1)
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-4)
    g_got = torch.autograd.grad(got.sum(), (hidden, head.weight))
    g_want = torch.autograd.grad(want.sum(), (hidden, head.weight))
    for a, b in zip(g_got, g_want):
        assert torch.allclose(a, b, atol=2e-2, rtol=2e-2), (a - b).abs().max()


def _grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def test_sft_objective_chunked_equals_plain(tiny_model_path, chat_packed):
    from transformers import AutoModelForCausalLM

    from rayalign.data.shards import read_dataset

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float64)
    rows = read_dataset(chat_packed).to_pylist()[:2]
    out = []
    for chunked in (False, True):
        obj = CausalLMObjective("sft", chunked_head=chunked)
        model.zero_grad()
        loss, _ = obj.loss(model, obj.collate(rows, 0))
        (0.5 * loss).backward()  # a scale before backward, as the trainer applies
        out.append((loss.item(), _grads(model)))
    assert out[1][0] == pytest.approx(out[0][0], rel=1e-12) and out[0][0] > 0
    for a, b in zip(out[0][1], out[1][1]):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("layout", ["padded", "packed", "tree"])
def test_dpo_objective_chunked_equals_plain(tiny_model_path, tokenizer, layout):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float64)
    sys = [tokenizer.encode("You are a helpful assistant.", add_special_tokens=False)]
    rows = [
        {
            "prompt_ids": sys[0] + tokenizer.encode(f"question {i}", add_special_tokens=False),
            "chosen_ids": tokenizer.encode(f"a good answer number {i}", add_special_tokens=False),
            "rejected_ids": tokenizer.encode("bad", add_special_tokens=False),
            "ref_chosen_logp": -30.0 - i,
            "ref_rejected_logp": -12.0,
        }
        for i in range(3)
    ]
    pack, share = {"padded": (False, False), "packed": (True, False), "tree": (True, True)}[layout]
    batch = collate_pair_layout(rows, tokenizer.pad_token_id, pack, share)
    assert ("target_index" in batch) == (layout == "tree") and ("seq_index" in batch) == (layout == "packed")
    out = []
    for chunked in (False, True):
        obj = PreferenceObjective("dpo", beta=0.1, pack=pack, share_prefix=share, chunked_head=chunked)
        model.zero_grad()
        loss, metrics = obj.loss(model, batch)
        loss.backward()
        out.append((loss.item(), metrics["logps_chosen"].item(), _grads(model)))
    assert out[1][:2] == pytest.approx(out[0][:2], rel=1e-12)
    for a, b in zip(out[0][2], out[1][2]):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)

"""Aligner through the real training stages (`sft`, `prefer`; in-process, `peft: {method: aligner}`).

A note on what a tiny random model can show: its tied embeddings have std 0.02, so after the final
RMSNorm (hidden 64) no logit can exceed about 8·|e| ≈ 1.3 — the loss can only fall from ln 49,152
≈ 10.80 by about a nat whatever is trained. The behaviour tests therefore assert ranks and greedy
choices (which such a model CAN flip), not low losses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rayalign.data.tokenize import tokenize_prompt
from rayalign.models.loader import load_model

TINY = "tiny-random:llama"
TOPICS = ["rain", "cats", "tea", "maps", "jazz", "bread", "rivers", "chess"]
HELD_OUT = ["stars", "music", "apples", "trains"]
REPO = Path(__file__).resolve().parents[2]


def _prompt(topic: str) -> list[dict]:
    return [{"role": "user", "content": f"Tell me about {topic} please."}]


def _rank_of(model, tokenizer, topic: str, token_id: int) -> int:
    """Rank of `token_id` among next-token logits right after the assistant header (0 = greedy choice)."""
    ids = torch.tensor([tokenize_prompt(tokenizer, _prompt(topic))])
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    return int((logits > logits[token_id]).sum())


@pytest.mark.timeout(300)
def test_sft_stage_with_aligner_teaches_replies_to_open_with_sure(tmp_path, tokenizer):
    """8 chats whose every reply is "Sure" → `sft` with `peft: {method: aligner, tokens: 2, start_layer: 0}`
    (136 trainable parameters). Base model: "Sure" ranks in the thousands after the assistant header on
    held-out prompts; adapted model (loaded from the checkpoint through `load_model(adapter=...)`, the
    path serving uses): rank 0 on every held-out prompt, and greedy replies start with "Sure"."""
    chats = tmp_path / "chats.jsonl"
    chats.write_text(
        "".join(
            json.dumps({"id": f"c{i}", "messages": [*_prompt(t), {"role": "assistant", "content": "Sure"}]}) + "\n"
            for i, t in enumerate(TOPICS)
        )
    )
    from rayalign.stages import run_stage

    summary = run_stage(
        "sft",
        data={
            "model": TINY,
            "output_dir": str(tmp_path / "run"),
            "seed": 0,
            "progress": False,
            "data": {"inputs": [str(chats)], "seq_len": 64, "max_length": 64},
            "peft": {"method": "aligner", "tokens": 2, "start_layer": 0},
            "optim": {"lr": 0.1, "min_lr_ratio": 1.0},
            "micro_batch_size": 8,
            "max_steps": 25,
        },
    )
    adapter = Path(summary.checkpoint)
    meta = json.loads((adapter / "aligner_config.json").read_text())
    assert (meta["tokens"], meta["start_layer"], meta["trainable_params"]) == (2, 0, 2 * 64 + 2 * 4)
    assert not (adapter / "model.safetensors").exists()  # an adapter folder, not a copy of the base

    sure = tokenizer("Sure", add_special_tokens=False).input_ids[0]
    base = load_model(TINY)
    tuned = load_model(TINY, adapter=str(adapter))
    base_ranks = [_rank_of(base, tokenizer, t, sure) for t in HELD_OUT]
    tuned_ranks = [_rank_of(tuned, tokenizer, t, sure) for t in HELD_OUT]
    print(f"\nrank of 'Sure' after the assistant header: base {base_ranks}, Aligner SFT {tuned_ranks}")
    assert min(base_ranks) > 100
    assert tuned_ranks == [0, 0, 0, 0]

    # The HF generation backend (what `serve` and the generate stages use) with the adapter folder:
    # a batch of prompts of different lengths (left padding) — every reply opens with "Sure", and
    # padding does not change the result (each token's prefix attention reads only its own query).
    from rayalign.generate.engine import EngineConfig, GenRequest, SamplingParams, make_engine

    engine = make_engine(EngineConfig(backend="hf", model=TINY, adapter=str(adapter), batch_size=4))
    params = SamplingParams(max_tokens=3)
    prompts = [_prompt(t) for t in HELD_OUT[:2]] + [
        [{"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "Describe the sea at night."}],
    ]
    batched = engine.generate([GenRequest(messages=m, params=params) for m in prompts])
    alone = [engine.generate([GenRequest(messages=m, params=params)])[0] for m in prompts]
    assert all(r.texts[0].startswith("Sure") for r in batched), [r.texts for r in batched]
    assert [r.texts for r in batched] == [r.texts for r in alone]


@pytest.mark.timeout(300)
def test_prefer_stage_with_aligner_raises_pair_accuracy(tmp_path, tiny_model_path, tokenizer):
    """APO-zero with Aligner on 64 of the bundled pairs. Untrained, policy = reference, every margin is 0
    and the held-in pair accuracy is 0.5 (ties count ½); training only the prefix and gates lifts it."""
    from rayalign.prefer.stages import PreferConfig, run_prefer

    rows = []  # the bundled file also holds deliberately broken rows (for quarantine tests): skip them
    for line in (REPO / "rayjobs/data/pairs.jsonl").read_bytes().splitlines():
        try:
            row = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(row, dict) and str(row.get("id", "")).startswith("pair-") and len(rows) < 64:
            rows.append(row)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = PreferConfig.model_validate(
        dict(
            model=TINY,
            output_dir=str(tmp_path / "prefer"),
            data={"inputs": [str(pairs)]},
            reference={"pool": {"workers": 0}, "batch_size": 16},
            micro_batch_size=8,
            max_steps=12,
            seed=0,
            eval_pairs=64,
            progress=False,
            peft={"method": "aligner", "tokens": 4, "start_layer": 0},
            optim={"lr": 0.1, "min_lr_ratio": 1.0},
        )
    )
    result = run_prefer(cfg, log=lambda m: None)
    acc = result.metrics["heldin_accuracy"]
    from rayalign.objectives.accuracy import load_rows, preference_accuracy

    before = preference_accuracy(load_model(TINY), load_rows(result.details["data"]), tokenizer.pad_token_id)
    print(f"\nAligner APO-zero held-in pair accuracy: base {before}, trained {acc}")
    assert before["accuracy"] == pytest.approx(0.5, abs=0.02)
    assert result.checkpoint is not None and Path(result.checkpoint, "aligner_config.json").exists()
    assert acc >= 0.75

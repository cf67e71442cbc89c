"""GRPO raises a verifiable reward: the answer must start with "Sure" (the eval suite's start_with check).

A random tiny model never says "Sure", so a short SFT first teaches it four openers, one in four
"Sure" (sampled start rate measured below: between 0 and 0.5). GRPO on the constraint reward then
takes the sampled start rate to ≥ 0.8 within 16 steps of 4 prompts × 8 samples — synchronously and
asynchronously (rollouts 2 policy versions behind, TIS-corrected) — and a LoRA adapter takes it
to ≥ 0.5 in 24 steps (measured 0.31 → 0.55; the adapter is served on the SFT model to measure).
"""

from __future__ import annotations

import json

import pytest
from grpo_helpers import TINY, TOPICS, grpo_config, write_chats, write_prompts

from rayalign.generate.engine import EngineConfig, GenRequest, SamplingParams, make_engine
from rayalign.stages import run_stage

pytestmark = pytest.mark.timeout(420)


def sampled_start_rate(model: str, adapter: str | None = None) -> float:
    """Share of 8 prompts × 16 samples (temperature 1, fixed seed) starting with "Sure"."""
    engine = make_engine(EngineConfig(model=model, adapter=adapter, batch_size=16))
    params = SamplingParams(temperature=1.0, max_tokens=3, n=16, seed=11)
    reqs = [
        GenRequest(messages=[{"role": "user", "content": f"Tell me about {t}."}], params=params) for t in TOPICS[:8]
    ]
    texts = [t for res in engine.generate(reqs) for t in res.texts]
    engine.close()
    return sum(t.strip().lower().startswith("sure") for t in texts) / len(texts)


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft")
    chats = write_chats(tmp / "chat.jsonl")
    result = run_stage(
        "sft",
        data={
            "model": TINY,
            "output_dir": str(tmp / "sft"),
            "data": {"inputs": [chats], "max_length": 64, "seq_len": 64},
            "micro_batch_size": 4,
            "max_steps": 60,
            "seed": 1,
            "progress": False,
            "optim": {"lr": 1e-2, "min_lr_ratio": 1.0},
        },
    )
    start = sampled_start_rate(result.checkpoint)
    assert 0.0 < start < 0.5, start
    return result.checkpoint, start


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# variant → (extra config, lr, steps, sampled start rate the trained policy must reach)
VARIANTS = {
    "sync": ({}, 2e-3, 16, 0.8),
    "async": ({"asynchronous": {"max_staleness": 2}, "off_policy": {"correction": "tis", "cap": 2.0}}, 2e-3, 16, 0.8),
    # a LoRA adapter (r 16 on every linear layer) learns slower: from the same start to ≥ 0.5 in 24 steps
    "lora": ({"peft": {"method": "lora", "r": 16, "alpha": 32, "target_modules": ALL_LINEAR}}, 5e-3, 24, 0.5),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_grpo_raises_the_start_with_reward(tmp_path, sft, variant):
    checkpoint, start = sft
    extra, lr, steps, goal = VARIANTS[variant]
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    cfg = grpo_config(
        tmp_path / "grpo",
        checkpoint,
        prompts,
        group_size=8,
        prompts_per_step=4,
        micro_batch_size=4,
        max_steps=steps,
        rollout={"temperature": 1.0, "max_tokens": 3},
        optim={"lr": lr, "min_lr_ratio": 1.0, "max_grad_norm": 1.0},
        **extra,
    )
    result = run_stage("grpo", data=cfg)
    records = [json.loads(x) for x in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == steps
    assert records[0]["reward_mean"] < 0.5  # the first rollouts come from the SFT model
    assert result.metrics["pass_rate"] == result.metrics["reward_mean"]  # reward is 0/1, threshold 1
    if variant == "lora":  # the adapter served on the SFT model
        end = sampled_start_rate(checkpoint, adapter=str(tmp_path / "grpo" / "final"))
    else:
        end = sampled_start_rate(result.checkpoint)
    assert end >= goal, (start, end, [round(r["reward_mean"], 3) for r in records])

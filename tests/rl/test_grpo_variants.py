"""The variants run end to end in one process and log what they promise: KL to a frozen reference
(k3 > 0 once the policy left it), μ = 2 updates per rollout batch (ratios move off 1), RLOO
and Dr. GRPO advantages; and a GRPO stage validates inside a pipeline after sft."""

from __future__ import annotations

import json

import pytest
import yaml
from grpo_helpers import TINY, grpo_config, write_prompts

from rayalign.stages import run_stage

pytestmark = pytest.mark.timeout(240)
LENGTH = [{"name": "length", "params": {"target": 4, "unit": "chars"}}]


def records(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_kl_reference_inner_epochs_and_rloo(tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    cfg = grpo_config(
        tmp_path / "kl",
        TINY,
        prompts,
        max_steps=3,
        rewards=LENGTH,
        advantage="rloo",
        kl_coef=0.1,
        inner_epochs=2,
        eps_high=0.28,
        optim={"lr": 5e-2, "min_lr_ratio": 1.0, "max_grad_norm": 0.0},
    )
    result = run_stage("grpo", data=cfg)
    recs = records(tmp_path / "kl")
    assert [r["step"] for r in recs] == [1, 2, 3]
    for r in recs:
        assert r["kl"] >= 0.0
        assert r["reward/length"] == pytest.approx(r["reward_mean"])  # one part, weight 1
        assert r["response_length"] > 0 and r["rollout_tokens_per_s"] > 0 and r["tokens_per_s"] > 0
    # step 1's first update starts at the reference (k3 = 0), its second one after an update at lr 5e-2:
    # from then on the policy differs from the reference. (k3 is estimated on each step's own samples,
    # so its size need not grow from one step to the next.)
    assert all(r["kl"] > 1e-3 for r in recs)
    assert any(abs(r["ratio_mean"] - 1.0) > 1e-6 for r in recs)  # the second update sees ρ ≠ 1
    assert result.metrics["kl"] == recs[-1]["kl"]
    assert result.stage == "grpo" and result.checkpoint


def test_dr_grpo_constant_aggregation(tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    cfg = grpo_config(tmp_path / "dr", TINY, prompts, max_steps=1, rewards=LENGTH, advantage="dr_grpo")
    run_stage("grpo", data=cfg)
    [rec] = records(tmp_path / "dr")
    assert "kl" not in rec  # no reference without kl_coef
    assert rec["clip_fraction"] == 0.0 and rec["ratio_mean"] == pytest.approx(1.0)  # μ = 1: ρ = 1
    # its value by hand: tests/rl/test_grpo_step.py (constant divisor)


def test_grpo_validates_in_a_pipeline_after_sft(tmp_path):
    from rayalign.pipeline import load_pipeline, validate_pipeline

    spec = {
        "run_dir": str(tmp_path / "run"),
        "defaults": {"model": TINY},
        "stages": [
            {"name": "sft", "stage": "sft", "config": {"data": {"inputs": ["chat.jsonl"]}, "max_steps": 2}},
            {
                "name": "grpo",
                "stage": "grpo",
                "config": {"model": "${stages.sft.checkpoint}", "prompts": ["prompts.jsonl"], "max_steps": 2},
            },
        ],
    }
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(spec))
    _sft, grpo = validate_pipeline(load_pipeline(path), str(path))
    assert grpo.train.output_dir == str(tmp_path / "run" / "grpo")
    assert grpo.train.model == "<stages.sft.checkpoint>"

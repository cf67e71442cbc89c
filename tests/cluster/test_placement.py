"""GPU bookings of engine hosts: a tensor-parallel vLLM engine's host sits in a placement group of
the engine's GPUs and books none itself; anything else keeps the pool's own request."""

from __future__ import annotations

import pytest

from rayalign.config import ConfigError
from rayalign.generate.clair import ClairConfig
from rayalign.generate.common import GenStageConfig
from rayalign.generate.engine import EngineConfig
from rayalign.placement import check_host_gpus, engine_bundles, engine_gpus


def vllm(tp: int, **kw) -> EngineConfig:
    return EngineConfig(backend="vllm", tensor_parallel_size=tp, **kw)


def test_bundles_hold_the_host_cpus_with_the_first_gpu_and_one_gpu_per_further_worker():
    assert engine_bundles(4, 1.0, {"data_node": 1}) == [
        {"CPU": 1.0, "GPU": 1.0, "data_node": 1},
        {"GPU": 1.0},
        {"GPU": 1.0},
        {"GPU": 1.0},
    ]
    assert sum(b["GPU"] for b in engine_bundles(2, 0.5)) == 2


def test_which_engines_need_a_group():
    assert engine_gpus([vllm(4), vllm(1), None]) == 4
    assert engine_gpus([EngineConfig(backend="hf", tensor_parallel_size=4)]) == 1  # HF ignores tp
    assert engine_gpus([vllm(2, vllm_kwargs={"distributed_executor_backend": "mp"})]) == 1  # own subprocesses


def test_a_host_books_the_engines_gpus_or_none():
    check_host_gpus(4, 4, "pool.num_gpus")
    check_host_gpus(0, 4, "pool.num_gpus")
    check_host_gpus(1, 1, "pool.num_gpus")
    with pytest.raises(ConfigError, match=r"pool\.num_gpus: 8 GPU\(s\) for an engine with tensor_parallel_size 4"):
        check_host_gpus(8, 4, "pool.num_gpus")


def test_stage_configs_place_the_widest_engine_they_host():
    base = dict(inputs=["x"], output="y")
    assert GenStageConfig(**base, engine=vllm(1), pool={"num_gpus": 1}).actor_options() is None
    # clair's reviser is the tensor-parallel engine, not the policy's
    clair = ClairConfig(**base, reviser="llm", reviser_engine=vllm(4), pool={"workers": 2, "num_gpus": 4})
    assert engine_gpus(clair.engine_configs()) == 4
    options = clair.actor_options()
    assert options is not None and options.tp == 4
    # called other than by an actor start (Ray Data's issue detectors do): no group is made
    assert options() == {"num_cpus": 0.5, "num_gpus": 0, "resources": {}} and options.groups == []
    with pytest.raises(ConfigError, match=r"pool\.num_gpus"):
        GenStageConfig(**base, engine=vllm(2), pool={"num_gpus": 1}).actor_options()


def test_grpo_engines_book_a_tensor_parallel_engine_once(tmp_path):
    """GRPO's rollout engine actors follow the same rule: with a tp-2 vLLM engine an actor asking
    for 1 GPU is refused before Ray starts (0 or 2 are the honest requests)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rl"))
    from grpo_helpers import TINY, grpo_config, write_prompts

    from rayalign.rl.config import GRPOConfig
    from rayalign.rl.grpo import start_engines

    prompts = write_prompts(tmp_path / "p.jsonl")
    data = grpo_config(tmp_path / "out", TINY, prompts, engine={"backend": "vllm", "tensor_parallel_size": 2})
    cfg = GRPOConfig.model_validate({**data, "engine_gpus": 1})
    with pytest.raises(ConfigError, match=r"engine_gpus: 1 GPU\(s\) for an engine with tensor_parallel_size 2"):
        start_engines(cfg)

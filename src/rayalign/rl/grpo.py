"""`rayalign grpo CONFIG.yaml`: GRPO with verifiable rewards on the training engine.

    rayalign grpo rayjobs/configs/grpo_tiny.yaml max_steps=20 advantage=dr_grpo

The stage gets the prompts ready (raw files → ``<output_dir>/prompts``, the `prompts` kind), starts
the rollout engines as Ray actors when training runs on Ray Train (``scaling.workers`` ≥ 1; with
0 the engine lives in the training process), and launches `rl.trainer.grpo_loop` through the
training engine (`train.launcher.launch`). The result's metrics are the last logged step's
(reward_mean, pass_rate, kl, ...); see docs/grpo.md.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from rayalign import storage
from rayalign.config import ConfigError
from rayalign.data.schemas import SCHEMAS
from rayalign.data.shards import PoolConfig, ProcessResult, run_sharded
from rayalign.results import StageResult
from rayalign.rl.config import GRPOConfig

__all__ = ["GRPOConfig", "run_grpo"]


class _PromptRows:
    """Prompt rows are validated and normalised by the shard reader; nothing else to do."""

    output_schema = SCHEMAS["prompts"]

    def process(self, rows: list[dict]) -> ProcessResult:
        return ProcessResult(rows)


def prepared_prompts(cfg: GRPOConfig, log=print) -> str:
    """A folder of prompt rows: ``prompts`` as is when it names one prepared folder, else the raw
    files read into ``<output_dir>/prompts`` (resumable; bad rows quarantined with their reason)."""
    if len(cfg.prompts) == 1 and storage.is_dir(storage.join(cfg.prompts[0], "data")):
        return cfg.prompts[0]
    target = storage.join(cfg.train.output_dir, "prompts")
    manifest = run_sharded(
        "grpo-prompts",
        cfg.prompts,
        target,
        _PromptRows,
        kind="prompts",
        pool=PoolConfig(workers=0),
        config_hash=hashlib.sha256(json.dumps(cfg.prompts).encode()).hexdigest()[:16],
        log=log,
    )
    if not manifest.counts.ok:
        raise ConfigError(f"prompts: no valid prompt row in {cfg.prompts} (see {target}/quarantine)")
    return target


def start_engines(cfg: GRPOConfig) -> list[Any]:

    from rayalign.raycluster import ensure_ray
    from rayalign.rl.rollout import engine_actor_class

    ensure_ray()
    actor = engine_actor_class(cfg.engine_cpus, cfg.engine_gpus)
    return [actor.remote(cfg.engine_config(), cfg.train.torch_threads) for _ in range(cfg.engines)]


def run_grpo(cfg: GRPOConfig, log=print) -> StageResult:
    from rayalign.rl.trainer import grpo_loop
    from rayalign.train.launcher import launch

    cfg.engine_config()  # a backend that cannot take weight updates fails before any work
    train = cfg.train_config(prepared_prompts(cfg, log))
    actors = start_engines(cfg) if train.scaling.workers > 0 else None
    try:
        trained = launch(train, grpo_loop, grpo=cfg, actors=actors)
    finally:
        if actors:
            import ray

            for a in actors:
                ray.kill(a)
    m = trained.metrics
    log(f"[grpo] {m.get('steps')} steps: reward_mean {m.get('reward_mean')}, pass_rate {m.get('pass_rate')}")
    return StageResult(
        stage="grpo",
        output=train.output_dir,
        checkpoint=trained.checkpoint,
        metrics=m,
        details={"prompts": train.data.path, "train": trained.details},
    )

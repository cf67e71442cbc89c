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


def start_engines(cfg: GRPOConfig) -> tuple[list[Any], list[Any]]:
    """The rollout engine actors and the placement groups they live in. An actor whose vLLM engine
    is tensor-parallel over N GPUs (Ray executor) sits in bundle 0 of its own STRICT_PACK group of N
    one-GPU bundles and books no GPU itself, so the engine's workers take the group's GPUs and
    nothing is booked twice (`rayalign.placement`); otherwise the actor holds `engine_gpus`."""
    from rayalign.placement import check_host_gpus, engine_bundles, engine_gpus
    from rayalign.raycluster import ensure_ray
    from rayalign.rl.rollout import engine_actor_class

    ecfg = cfg.engine_config()
    tp = engine_gpus([ecfg])
    check_host_gpus(cfg.engine_gpus, tp, "engine_gpus")
    ensure_ray()
    if tp <= 1:
        actor = engine_actor_class(cfg.engine_cpus, cfg.engine_gpus)
        return [actor.remote(ecfg, cfg.train.torch_threads) for _ in range(cfg.engines)], []
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    actor = engine_actor_class(cfg.engine_cpus, 0.0)
    actors, groups = [], []
    for _ in range(cfg.engines):
        group = placement_group(engine_bundles(tp, cfg.engine_cpus), strategy="STRICT_PACK")
        groups.append(group)
        strategy = PlacementGroupSchedulingStrategy(
            group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
        )
        actors.append(actor.options(scheduling_strategy=strategy).remote(ecfg, cfg.train.torch_threads))
    return actors, groups


def run_grpo(cfg: GRPOConfig, log=print) -> StageResult:
    from rayalign.rl.trainer import grpo_loop
    from rayalign.train.launcher import launch

    cfg.engine_config()  # a backend that cannot take weight updates fails before any work
    train = cfg.train_config(prepared_prompts(cfg, log))
    actors, groups = start_engines(cfg) if train.scaling.workers > 0 else (None, [])
    try:
        trained = launch(train, grpo_loop, grpo=cfg, actors=actors)
    finally:
        if actors:
            import ray
            from ray.util.placement_group import remove_placement_group

            for a in actors:
                ray.kill(a)
            for g in groups:
                remove_placement_group(g)  # the engines' GPUs are free for the next stage
    m = trained.metrics
    log(f"[grpo] {m.get('steps')} steps: reward_mean {m.get('reward_mean')}, pass_rate {m.get('pass_rate')}")
    return StageResult(
        stage="grpo",
        output=train.output_dir,
        checkpoint=trained.checkpoint,
        metrics=m,
        details={"prompts": train.data.path, "train": trained.details},
    )

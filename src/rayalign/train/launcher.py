"""Runs a TrainConfig: in this process (`scaling.workers: 0`) or on Ray Train (`workers: N`).

This is the only training module that imports Ray. It maps the config to ScalingConfig (workers,
GPUs, resources per worker), RunConfig (storage path, run name, FailureConfig(max_failures),
checkpoint retention) and TorchConfig (gloo on CPU, NCCL on GPU), and gives the loop a `Hooks`
object that reports metrics/checkpoints to Ray and hands back Ray's latest checkpoint after a
worker failure. Other stages (prefer, reward) call `launch(cfg)` with their own objective.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rayalign import storage
from rayalign.results import StageResult
from rayalign.train.config import TrainConfig
from rayalign.train.loop import LocalHooks
from rayalign.train.trainer import train_loop

# Settings forwarded to Ray Train workers: model cache, hub mode and endpoint, object-store endpoint.
# Credentials (HF_TOKEN, AWS keys) are not: a runtime env is recorded and shown by the dashboard.
# Workers inherit them from the node's environment (cluster.env, a Kubernetes secret, the
# instance role) or, on a local cluster, from the job's environment (`rayalign.runtime_env`).
FORWARD_ENV = (
    "RAYALIGN_CACHE",
    "HF_HUB_OFFLINE",
    "HF_ENDPOINT",
    "TOKENIZERS_PARALLELISM",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_EC2_METADATA_DISABLED",
    "WANDB_MODE",
    "WANDB_DIR",
    "MLFLOW_TRACKING_URI",
)


class RayHooks(LocalHooks):
    def device(self):
        import ray.train.torch

        return ray.train.torch.get_device()

    def resume_from(self) -> str | None:
        import pyarrow.fs
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
            return checkpoint.path
        # remote storage: read in place (each rank reads only its parts of the shards), not downloaded
        scheme = {"s3": "s3", "gcs": "gs"}.get(checkpoint.filesystem.type_name)
        if scheme is None:
            return checkpoint.to_directory()  # a file system rayalign.storage cannot address by URI
        return f"{scheme}://{checkpoint.path}"

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        import ray.train

        # Every rank must call report; only rank 0 hands over the (shared) checkpoint folder.
        ck = None
        if checkpoint_dir and ray.train.get_context().get_world_rank() == 0:
            ck = ray.train.Checkpoint.from_directory(checkpoint_dir)
        ray.train.report(metrics, checkpoint=ck)


def _ray_worker(config: dict) -> None:  # Ray Train's worker function
    train_loop(config, hooks=RayHooks())


def _entry_worker(entry: Callable[..., StageResult], context: dict) -> Callable[[dict], None]:
    def worker(config: dict) -> None:  # a stage's own loop, with what the driver built for it
        entry(config, hooks=RayHooks(), **context)

    return worker


def launch(cfg: TrainConfig, entry: Callable[..., StageResult] | None = None, **context: Any) -> StageResult:
    """Run `cfg`'s training. `entry(config, hooks, **context)` replaces the default loop for stages
    with their own Trainer (GRPO); `context` (e.g. Ray actor handles) travels to every worker."""
    from rayalign.objectives import get_objective

    get_objective(cfg.objective.name, **cfg.objective.kwargs())  # a bad name fails here, not in N workers
    out = cfg.output_dir if storage.is_uri(cfg.output_dir) else str(Path(cfg.output_dir).resolve())
    cfg = cfg.model_copy(update={"output_dir": out})
    if cfg.scaling.workers == 0:
        return entry(cfg, **context) if entry else train_loop(cfg)

    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from rayalign.raycluster import ensure_ray

    ensure_ray()
    sc = cfg.scaling
    resources = {"CPU": sc.cpus_per_worker, **sc.resources_per_worker}
    if sc.use_gpu:
        resources["GPU"] = sc.gpus_per_worker
    env = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
    env.update(OMP_NUM_THREADS=str(cfg.torch_threads))
    trainer = TorchTrainer(
        _entry_worker(entry, context) if entry else _ray_worker,
        train_loop_config=cfg.model_dump(mode="json"),
        torch_config=TorchConfig(backend="nccl" if sc.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=sc.workers, use_gpu=sc.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=cfg.name,
            storage_path=sc.storage_path or storage.join(out, "ray"),
            failure_config=ray.train.FailureConfig(max_failures=sc.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=max(1, cfg.checkpoint.keep_last)),
            worker_runtime_env={"env_vars": env},  # type: ignore[call-arg]  # Train V2 RunConfig; stubs show the AIR one
        ),
    )
    result = trainer.fit()
    # Rank 0 wrote the summary into the run folder (a local folder or object storage).
    summary = StageResult.from_json(storage.read_json(storage.join(out, "summary.json")))
    if result.checkpoint is not None:
        summary.details["ray_checkpoint"] = result.checkpoint.path
    return summary

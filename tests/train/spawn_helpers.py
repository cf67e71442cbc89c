"""Run the Trainer on N gloo processes without Ray (torch.multiprocessing), for tests that need
real FSDP2 ranks but not Ray Train's machinery. A plain module: conftest files cannot be imported."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ray_ports import free_port


def _worker(rank: int, world: int, port: int, cfg: dict, out: str) -> None:
    import torch.distributed as dist

    from rayalign.train.config import TrainConfig
    from rayalign.train.trainer import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        trainer = Trainer(TrainConfig.model_validate(cfg))
        # what the rank holds before training: local shard sizes of the frozen base, adapter values
        params = list(trainer.model.named_parameters())
        held = {
            "base_local": sum(p.to_local().numel() for _, p in params if not p.requires_grad),
            "base_global": sum(p.numel() for _, p in params if not p.requires_grad),
            "adapter": {n: p.full_tensor().flatten()[:8].tolist() for n, p in params if p.requires_grad},
        }
        Path(out, f"rank{rank}.json").write_text(json.dumps(held))
        trainer.train()
    finally:
        dist.destroy_process_group()


def spawn_trainers(cfg: dict, world: int, out: Path) -> list[dict]:
    """Train `cfg` on `world` gloo processes; returns what each rank held after building the model."""
    import torch.multiprocessing as mp

    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(_worker, args=(world, free_port(), cfg, str(out)), nprocs=world, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]

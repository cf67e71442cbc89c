"""Aligner: a few global prefix tokens shared by every attention layer (Zhang et al. 2023,
"Aligner: One Global Token is Worth Millions of Parameters When Aligning LLMs").

What is trained (everything else is frozen):

- ``prefix``: ``N`` embeddings of the model's hidden size (default ``N = 1``), ONE set shared by
  all decoder layers from ``start_layer`` on;
- ``gate``: one scalar per adapted layer and attention head, initialised to zero.

What a layer ``l >= start_layer`` computes in addition to its ordinary attention::

    k_p, v_p = k_proj(prefix), v_proj(prefix)        # the layer's own frozen projections,
                                                     # no rotary position on the prefix keys
    extra_h  = softmax(q_h · k_pᵀ · scaling) · v_p   # per head h, a SEPARATE softmax over the N tokens;
                                                     # q_h: the layer's queries after rotary;
                                                     # grouped-query heads share their kv head's k_p/v_p
    o_proj input += gate[l, h] · extra_h

Because the gate starts at zero the adapted model's logits equal the base model's exactly at
initialisation. Note that with ``N = 1`` the separate softmax is identically 1, so each layer adds a
learned, gated per-head vector; with ``N > 1`` the queries choose among the prefix tokens.

How it is wired (no copy of the Hugging Face attention code, so every Llama-family model —
Llama, SmolLM2, Qwen2, Mistral — and every attention backend — eager, SDPA — keeps its own path):

1. a forward pre-hook on ``self_attn`` records the rotary ``(cos, sin)`` it was called with;
2. a forward hook on ``q_proj`` records the raw query projection;
3. a forward pre-hook on ``o_proj`` rotates those queries with the model's own
   ``apply_rotary_pos_emb``, attends to the prefix and adds the gated result to o_proj's input.

Packed sequences (position_ids resets, no attention mask) need nothing special: the prefix
attention of a token depends only on that token's own query, never on other tokens. KV-cached
generation works too, since the prefix never enters the cache. The hooks hand the queries from
q_proj to o_proj through per-layer slots, so one model object runs one forward at a time (the HF
generation backend already serialises calls with a lock).

FSDP2: both parameters live in ONE module, ``model.aligner``, at the model root, so
``fully_shard(decoder_layer)`` for each layer followed by ``fully_shard(model)`` puts them in the
root's parameter group. The root group stays unsharded for the whole forward, and the hooks
look the parameters up at call time (FSDP2 swaps sharded and unsharded tensors on the module),
so every layer reads the gathered prefix and the root's reduce-scatter sums its gradient from
all layers. ``aligner_state_dict`` gathers DTensor shards, so save/resume work the same way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

WEIGHTS_NAME = "aligner.safetensors"
CONFIG_NAME = "aligner_config.json"


class AlignerError(ValueError):
    """Aligner cannot be applied or loaded; the message names the field and the fix."""


class AlignerParams(nn.Module):
    """The only trainable tensors: shared prefix tokens and per-layer, per-head gates."""

    def __init__(
        self,
        tokens: int,
        hidden_size: int,
        start_layer: int,
        num_layers: int,
        num_heads: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.tokens = tokens
        self.start_layer = start_layer
        self.num_layers = num_layers
        # Unit-variance tokens look like the RMS-normalised hidden states k_proj/v_proj were
        # trained on, so the prefix's keys and values start on a sensible scale.
        self.prefix = nn.Parameter(torch.randn(tokens, hidden_size, dtype=dtype, device=device))
        # Zero gates: the adapted model starts out exactly equal to the base model.
        self.gate = nn.Parameter(torch.zeros(num_layers - start_layer, num_heads, dtype=dtype, device=device))

    def extra_repr(self) -> str:
        return f"tokens={self.tokens}, start_layer={self.start_layer}, num_layers={self.num_layers}"


def aligner_param_count(config: Any, tokens: int = 1, start_layer: int = 2) -> int:
    """Trainable parameters: ``tokens · hidden + (layers − start_layer) · heads``.

    SmolLM2-135M (hidden 576, 30 layers, 9 heads), 1 token, start 2: 576 + 28·9 = 828.
    """
    _check_args(config, tokens, start_layer)
    return tokens * config.hidden_size + (config.num_hidden_layers - start_layer) * config.num_attention_heads


def _check_args(config: Any, tokens: int, start_layer: int) -> None:
    layers = config.num_hidden_layers
    if not isinstance(tokens, int) or tokens < 1:
        raise AlignerError(f"aligner tokens={tokens!r}: must be an integer >= 1 (the paper uses 1)")
    if not isinstance(start_layer, int) or not 0 <= start_layer < layers:
        raise AlignerError(
            f"aligner start_layer={start_layer!r}: must be an integer in [0, {layers - 1}] for this model "
            f"({layers} decoder layers); use a smaller start_layer"
        )


def _decoder_layers(model: Any) -> nn.ModuleList:
    """The decoder layer list of a causal LM (``model.model.layers``) or a bare base model."""
    for owner in (getattr(model, "model", None), model):
        layers = getattr(owner, "layers", None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise AlignerError(
        f"{type(model).__name__}: no decoder layer list (`model.model.layers`) found; Aligner supports "
        f"Llama-family models (Llama, SmolLM2, Qwen2, Mistral)"
    )


def _check_attention(attn: Any, index: int) -> None:
    missing = [
        n
        for n in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "num_key_value_groups")
        if not hasattr(attn, n)
    ]
    if missing:
        raise AlignerError(
            f"decoder layer {index}: attention module {type(attn).__name__} lacks {', '.join(missing)}; "
            f"Aligner supports Llama-family attention (separate q/k/v/o projections with rotary embeddings)"
        )
    module = sys.modules.get(type(attn).__module__)
    if not callable(getattr(module, "apply_rotary_pos_emb", None)):
        raise AlignerError(
            f"decoder layer {index}: {type(attn).__module__} defines no apply_rotary_pos_emb; "
            f"Aligner needs a rotary-embedding attention"
        )


class _LayerHooks:
    """The three hooks of one adapted attention module and the tensors they pass along."""

    def __init__(self, params: AlignerParams, attn: Any, gate_row: int):
        self.params = params
        self.attn = attn
        self.gate_row = gate_row
        self.rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        self.cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None
        self.query: torch.Tensor | None = None
        self.handles = [
            attn.register_forward_pre_hook(self._record_rotary, with_kwargs=True),
            attn.q_proj.register_forward_hook(self._record_query),
            attn.o_proj.register_forward_pre_hook(self._add_prefix_attention),
        ]

    def _record_rotary(self, module, args, kwargs):
        pe = kwargs.get("position_embeddings")
        if pe is None and len(args) > 1:
            pe = args[1]
        if pe is None:
            raise RuntimeError(f"Aligner: attention layer {self.attn.layer_idx} was called without position_embeddings")
        self.cos_sin = pe

    def _record_query(self, module, args, output):
        self.query = output

    def _add_prefix_attention(self, module, args):
        (attn_out,) = args
        query, (cos, sin) = self.query, self.cos_sin
        self.query = self.cos_sin = None  # free them as soon as they are used
        attn = self.attn
        d = attn.head_dim
        bsz, seq, _ = attn_out.shape
        # Queries exactly as the layer used them: (b, heads, s, d), rotated by the model's own function.
        q = query.view(bsz, seq, -1, d).transpose(1, 2)
        q = self.rotary(q, q[:, :1], cos, sin)[0]
        heads = q.shape[1]

        # Prefix keys/values from this layer's frozen projections; no rotary (the prefix has no position).
        # Parameters are read here, at call time, because FSDP2 swaps them between shard and full.
        prefix = self.params.prefix.to(attn_out.dtype)
        kp = attn.k_proj(prefix).view(prefix.shape[0], -1, d).transpose(0, 1)  # (kv_heads, N, d)
        vp = attn.v_proj(prefix).view(prefix.shape[0], -1, d).transpose(0, 1)
        # Grouped-query attention: query head h reads kv head h // groups.
        kp = kp.repeat_interleave(attn.num_key_value_groups, dim=0)  # (heads, N, d)
        vp = vp.repeat_interleave(attn.num_key_value_groups, dim=0)

        scores = torch.matmul(q, kp.transpose(-1, -2)) * attn.scaling  # (b, heads, s, N)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        extra = torch.matmul(probs, vp)  # (b, heads, s, d)
        gate = self.params.gate[self.gate_row].to(extra.dtype).view(1, heads, 1, 1)
        extra = (extra * gate).transpose(1, 2).reshape(bsz, seq, heads * d)
        return (attn_out + extra,)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def add_aligner(model: Any, tokens: int = 1, start_layer: int = 2) -> nn.Module:
    """Freeze ``model`` and add Aligner (trainable ``model.aligner.prefix`` and ``model.aligner.gate``).

    Returns the same model object, modified in place.
    """
    if getattr(model, "aligner", None) is not None:
        raise AlignerError("this model already has an Aligner; apply it once (or use load_aligner)")
    config = model.config
    _check_args(config, tokens, start_layer)
    layers = _decoder_layers(model)
    if len(layers) != config.num_hidden_layers:
        raise AlignerError(f"model has {len(layers)} decoder layers but config says {config.num_hidden_layers}")
    for i in range(start_layer, len(layers)):
        _check_attention(layers[i].self_attn, i)

    for p in model.parameters():
        p.requires_grad_(False)
    first: Any = layers[start_layer].self_attn
    ref = first.k_proj.weight
    params = AlignerParams(
        tokens,
        config.hidden_size,
        start_layer,
        len(layers),
        config.num_attention_heads,
        dtype=ref.dtype,
        device=ref.device,
    )
    model.add_module("aligner", params)
    model._aligner_hooks = [
        _LayerHooks(params, layers[i].self_attn, i - start_layer) for i in range(start_layer, len(layers))
    ]
    return model


def remove_aligner(model: Any) -> nn.Module:
    """Detach Aligner again (hooks and parameters); the base weights stay frozen."""
    for hooks in getattr(model, "_aligner_hooks", []):
        hooks.remove()
    model._aligner_hooks = []
    if "aligner" in model._modules:
        del model._modules["aligner"]
    return model


def aligner_state_dict(model: Any, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``{"prefix", "gate"}`` as full CPU tensors.

    Without ``state_dict`` FSDP2 DTensor shards are gathered here (a collective: call on every
    rank). With a full, already gathered model state dict (what a rank-0-only checkpoint writer
    holds) the two tensors are taken from it and no collective runs.
    """
    params = getattr(model, "aligner", None)
    if params is None:
        raise AlignerError("model has no Aligner; call add_aligner(model) first")
    out = {}
    for name in ("prefix", "gate"):
        if state_dict is not None:
            keys = [k for k in state_dict if k == f"aligner.{name}" or k.endswith(f".aligner.{name}")]
            if len(keys) != 1:
                raise AlignerError(f"state_dict holds {len(keys)} entries for aligner.{name}, expected 1")
            t = state_dict[keys[0]].detach()
        else:
            t = getattr(params, name).detach()
            if hasattr(t, "full_tensor"):  # DTensor under FSDP2: a collective every rank must join
                t = t.full_tensor()
        out[name] = t.to("cpu", copy=True).contiguous()  # a snapshot, never a view of the live parameter
    return out


def _is_writer() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def save_aligner(model: Any, out_dir: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``aligner.safetensors`` and ``aligner_config.json`` into ``out_dir``.

    Two ways to call it under FSDP2: on every rank without ``state_dict`` (the shards are gathered,
    rank 0 writes), or on rank 0 alone with the full model state dict gathered beforehand.
    """
    from safetensors.torch import save_file

    state = aligner_state_dict(model, state_dict)
    params = model.aligner
    out = Path(out_dir)
    if state_dict is not None or _is_writer():
        out.mkdir(parents=True, exist_ok=True)
        save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt", "method": "aligner"})
        cfg = model.config
        meta = {
            "method": "aligner",
            "tokens": params.tokens,
            "start_layer": params.start_layer,
            "base_model": getattr(cfg, "_name_or_path", "") or "",
            "model_type": getattr(cfg, "model_type", None),
            "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "trainable_params": aligner_param_count(cfg, params.tokens, params.start_layer),
        }
        (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def read_aligner_config(path: str | Path) -> dict[str, Any]:
    folder = Path(path)
    cfg_file = folder / CONFIG_NAME
    if not cfg_file.exists() or not (folder / WEIGHTS_NAME).exists():
        raise AlignerError(
            f"{folder} is not an Aligner adapter: it needs {CONFIG_NAME} and {WEIGHTS_NAME} (written by save_aligner)"
        )
    return json.loads(cfg_file.read_text())


def load_aligner(model: Any, path: str | Path) -> nn.Module:
    """Apply the Aligner adapter saved in ``path`` to ``model`` (adds it first when absent)."""
    from safetensors.torch import load_file

    meta = read_aligner_config(path)
    cfg = model.config
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads"):
        if key in meta and meta[key] != getattr(cfg, key):
            raise AlignerError(
                f"adapter {path} was trained on a model with {key}={meta[key]} but this model has "
                f"{key}={getattr(cfg, key)}; load it on its base model {meta.get('base_model')!r}"
            )
    tokens, start = int(meta["tokens"]), int(meta["start_layer"])
    if getattr(model, "aligner", None) is None:
        add_aligner(model, tokens=tokens, start_layer=start)
    elif (model.aligner.tokens, model.aligner.start_layer) != (tokens, start):
        raise AlignerError(
            f"model already has an Aligner with tokens={model.aligner.tokens}, "
            f"start_layer={model.aligner.start_layer}; the adapter at {path} has tokens={tokens}, start_layer={start}"
        )
    state = load_file(str(Path(path) / WEIGHTS_NAME))
    with torch.no_grad():
        for name in ("prefix", "gate"):
            param = getattr(model.aligner, name)
            if name not in state or tuple(state[name].shape) != tuple(param.shape):
                got = tuple(state[name].shape) if name in state else "missing"
                raise AlignerError(f"adapter {path}: tensor {name!r} is {got}, expected {tuple(param.shape)}")
            param.copy_(state[name].to(param.dtype))
    return model

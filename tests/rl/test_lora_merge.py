"""The merged LoRA sync's arithmetic (`rl.vllm_weights`): the adapted layers' base weights read from
the model folder plus B·A·alpha/r equal peft's own merge of the same adapter, and a model folder
without those layers is refused with their names."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from rayalign.models.adapters import PeftConfig, apply_peft
from rayalign.models.loader import resolve_model_path
from rayalign.rl.vllm_weights import base_weights, fused_siblings, lora_modules, merge_lora

TARGETS = ["q_proj", "v_proj", "o_proj"]


def test_merged_layers_equal_peft_merge():
    folder = resolve_model_path("tiny-random:llama")
    peft = PeftConfig(method="lora", r=4, alpha=12, target_modules=TARGETS)
    model = apply_peft(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), peft)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)
    adapter = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    modules = sorted(lora_modules(adapter))
    layers = len(model.base_model.model.model.layers)
    assert len(modules) == layers * len(TARGETS) and modules[0] == "model.layers.0.self_attn.o_proj"
    base = base_weights(folder, modules)
    merged = merge_lora(base, adapter, peft.alpha / peft.r, torch.float32)

    reference = model.merge_and_unload().state_dict()
    assert sorted(merged) == sorted(f"{m}.weight" for m in modules)
    for name, w in merged.items():
        torch.testing.assert_close(w, reference[name], rtol=0, atol=1e-6)
    # the adapter moved every adapted layer, by scale 3 × B·A
    q = "model.layers.0.self_attn.q_proj"
    a, b = (
        adapter[f"base_model.model.{q}.lora_A.default.weight"],
        adapter[f"base_model.model.{q}.lora_B.default.weight"],
    )
    torch.testing.assert_close(merged[f"{q}.weight"] - base[f"{q}.weight"], 3.0 * b @ a, rtol=0, atol=1e-6)
    assert all((merged[n] - base[n]).abs().max() > 1e-3 for n in merged)
    # a fused sibling without an adapter (k_proj beside q/v) goes through as the base
    k = "model.layers.0.self_attn.k_proj.weight"
    extra = base_weights(folder, [*modules, "model.layers.0.self_attn.k_proj"])
    assert torch.equal(merge_lora(extra, adapter, 3.0, torch.float32)[k], extra[k])
    # bf16 engines get bf16 layers
    assert merge_lora(base, adapter, 3.0, torch.bfloat16)[f"{q}.weight"].dtype == torch.bfloat16


def test_missing_base_layers_are_named():
    folder = resolve_model_path("tiny-random:llama")
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.nope\.weight.*adapter sync"):
        base_weights(folder, ["model.layers.0.mlp.nope"])
    with pytest.raises(ValueError, match="no LoRA"):
        lora_modules({"model.embed_tokens.weight": torch.zeros(2, 2)})


def test_fused_layers_are_sent_whole():
    packed = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
    got = fused_siblings(["model.layers.3.self_attn.q_proj", "model.layers.3.self_attn.o_proj"], packed)
    attn = "model.layers.3.self_attn"
    assert got == [f"{attn}.k_proj", f"{attn}.o_proj", f"{attn}.q_proj", f"{attn}.v_proj"]
    assert fused_siblings(["model.layers.0.mlp.up_proj"], packed) == [
        "model.layers.0.mlp.gate_proj",
        "model.layers.0.mlp.up_proj",
    ]

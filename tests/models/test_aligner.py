"""Aligner (global-token PEFT): exactness at init, parameter count, a reference implementation,
packing, KV-cached generation, save/load, and clear errors. All on 2-layer tiny models (seconds)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rayalign.models.aligner import (
    AlignerError,
    add_aligner,
    aligner_param_count,
    load_aligner,
    read_aligner_config,
    remove_aligner,
    save_aligner,
)
from rayalign.models.loader import load_model

ARCHS = ["llama", "qwen2", "mistral"]


def tiny(arch: str = "llama", attn: str = "sdpa"):
    return load_model(f"tiny-random:{arch}", attn_implementation=attn)


def ids_batch(seed: int = 0, shape=(2, 9)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, 2000, shape, generator=g)


def set_random_adapter(model, seed: int = 0, scale: float = 0.7) -> None:
    """Nonzero gates (and a fresh prefix) so the adapter really changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.aligner.gate.copy_(torch.randn(model.aligner.gate.shape, generator=g) * scale)
        model.aligner.prefix.copy_(torch.randn(model.aligner.prefix.shape, generator=g))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_zero_gates_give_exactly_the_base_logits(arch, attn):
    model = tiny(arch, attn)
    x = ids_batch()
    with torch.no_grad():
        base = model(x).logits
        add_aligner(model, tokens=2, start_layer=0)
        adapted = model(x).logits
        assert torch.equal(adapted, base)  # bit-identical: gate 0 adds exact zeros
        set_random_adapter(model)
        moved = model(x).logits
    # ...and the hooks are live: nonzero gates do move the logits
    assert (moved - base).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("tokens,start", [(1, 0), (1, 1), (3, 1)])
def test_trainable_count_matches_formula_and_lora(arch, tokens, start):
    """tiny models: hidden 64, 2 layers, 4 heads (2 kv heads, head_dim 16).
    Aligner tokens=1, start=0: 1·64 + 2·4 = 72;  tokens=3, start=1: 3·64 + 1·4 = 196.
    LoRA r=8 on q_proj (64→64) and v_proj (64→32) per layer: 8·(64+64) + 8·(64+32) = 1,792; ×2 layers = 3,584."""
    from peft import LoraConfig, get_peft_model

    model = add_aligner(tiny(arch), tokens=tokens, start_layer=start)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    cfg = model.config
    assert trainable == tokens * cfg.hidden_size + (cfg.num_hidden_layers - start) * cfg.num_attention_heads
    assert trainable == aligner_param_count(cfg, tokens, start)
    assert aligner_param_count(cfg, 1, 0) == 72 and aligner_param_count(cfg, 3, 1) == 196
    # only the two Aligner tensors train
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"aligner.prefix", "aligner.gate"}

    lora = get_peft_model(tiny(arch), LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    lora_count = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert lora_count == 3584
    print(
        f"\n{arch}: Aligner(tokens={tokens}, start_layer={start}) trains {trainable} params; "
        f"LoRA r=8 (q,v) trains {lora_count} ({lora_count / trainable:.0f}x more)"
    )


def test_param_count_for_smollm2_config():
    """SmolLM2-135M: hidden 576, 30 layers, 9 heads → 1·576 + 28·9 = 828 (the paper's ~5K is for 7B:
    4096 + 30·32 = 5,056)."""
    from types import SimpleNamespace

    smol = SimpleNamespace(hidden_size=576, num_hidden_layers=30, num_attention_heads=9)
    assert aligner_param_count(smol, 1, 2) == 828
    llama7b = SimpleNamespace(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32)
    assert aligner_param_count(llama7b, 1, 2) == 5056


def _rotate(x, cos, sin):
    """Rotary embedding written out: pairs (x_i, x_{i+d/2}) rotated by the position's angle."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_layer_output_matches_reference_computation(arch, attn):
    """Adapted attention output == base attention output + o_proj-weight · (Σ_h gate_h · softmax(q_h·K_pᵀ/√d)·V_p),
    computed here head by head and position by position with plain tensor ops (qwen2 has q/k/v biases;
    both models use grouped-query attention: 4 query heads on 2 kv heads)."""
    torch.manual_seed(0)
    model = tiny(arch, attn)
    add_aligner(model, tokens=3, start_layer=1)
    set_random_adapter(model, seed=1, scale=1.5)
    layer = model.model.layers[1]
    attn_mod = layer.self_attn
    seen = {}

    def grab(mod, args, kwargs, out):
        seen["kwargs"], seen["out"] = dict(kwargs), out[0]

    handle = attn_mod.register_forward_hook(grab, with_kwargs=True)
    x = ids_batch(3, (2, 6))
    with torch.no_grad():
        model(x, use_cache=False)  # no cache, so the call can be replayed below
    handle.remove()
    kwargs, adapted_out = seen["kwargs"], seen["out"]
    h, (cos, sin) = kwargs["hidden_states"], kwargs["position_embeddings"]
    cos, sin = cos.expand(h.shape[0], -1, -1), sin.expand(h.shape[0], -1, -1)

    with torch.no_grad():
        gates = model.aligner.gate[0].clone()
        model.aligner.gate.zero_()  # the same layer without the prefix = the base attention
        base_out = attn_mod(**kwargs)[0]  # replay the very call the model made (same causal mask)

        cfg = model.config
        heads, kv_heads, d = cfg.num_attention_heads, cfg.num_key_value_heads, attn_mod.head_dim
        wq, wk, wv = attn_mod.q_proj, attn_mod.k_proj, attn_mod.v_proj
        prefix = model.aligner.prefix
        b, s, _ = h.shape
        extra = torch.zeros(b, s, heads * d)
        for bi in range(b):
            for t in range(s):
                q_all = h[bi, t] @ wq.weight.T + (wq.bias if wq.bias is not None else 0)
                for hd in range(heads):
                    kv = hd // (heads // kv_heads)
                    q = _rotate(q_all[hd * d : (hd + 1) * d], cos[bi, t], sin[bi, t])
                    k = prefix @ wk.weight.T + (wk.bias if wk.bias is not None else 0)  # no rotary on prefix
                    v = prefix @ wv.weight.T + (wv.bias if wv.bias is not None else 0)
                    k, v = k[:, kv * d : (kv + 1) * d], v[:, kv * d : (kv + 1) * d]
                    w = torch.softmax(k @ q / math.sqrt(d), dim=0)  # separate softmax over the 3 prefix tokens
                    extra[bi, t, hd * d : (hd + 1) * d] = gates[hd] * (w @ v)
        reference = base_out + extra @ attn_mod.o_proj.weight.T
    torch.testing.assert_close(adapted_out, reference, rtol=1e-5, atol=1e-5)
    assert (adapted_out - base_out).abs().max() > 1e-2  # the prefix term is not negligible


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_sequences_equal_separate_sequences(attn):
    """Two documents packed in one row (position_ids reset, no attention mask) give the same logits as
    each document alone: the prefix attention of a token reads only its own query. (transformers 5.19
    detects packing from position_ids only without a KV cache, i.e. in training: hence use_cache=False.)"""
    model = add_aligner(tiny("llama", attn), tokens=2, start_layer=0)
    set_random_adapter(model)
    a, b = ids_batch(4, (1, 5)), ids_batch(5, (1, 7))
    packed = torch.cat([a, b], dim=1)
    pos = torch.cat([torch.arange(5), torch.arange(7)]).unsqueeze(0)
    with torch.no_grad():
        together = model(input_ids=packed, position_ids=pos, use_cache=False).logits
        alone_a, alone_b = model(input_ids=a).logits, model(input_ids=b).logits
    torch.testing.assert_close(together[:, :5], alone_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together[:, 5:], alone_b, rtol=1e-5, atol=1e-5)


def test_kv_cached_generation_matches_full_forward():
    """Greedy generate with the KV cache == greedy decoding by re-running the whole sequence each step."""
    model = add_aligner(tiny("qwen2"), tokens=2, start_layer=1)
    set_random_adapter(model, scale=3.0)
    prompt = ids_batch(6, (1, 4))
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)[0, 4:]
        seq = prompt
        for _ in range(6):
            nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert cached.tolist() == seq[0, 4:].tolist()


def test_only_aligner_receives_gradients():
    model = add_aligner(tiny("mistral"), tokens=1, start_layer=1)
    set_random_adapter(model)
    x = ids_batch()
    model(x, labels=x).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(grads) == {"aligner.prefix", "aligner.gate"}
    assert grads["aligner.gate"].abs().sum() > 0 and grads["aligner.prefix"].abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients():
    """The training engine's `activation_checkpointing: true` recomputes each layer in backward; the hooks
    run again during the recomputation and must yield the very same prefix/gate gradients."""
    x = ids_batch(2)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = add_aligner(tiny("llama"), tokens=2, start_layer=0)
        set_random_adapter(model, seed=4)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(x, labels=x, use_cache=False).loss.backward()
        grads.append((model.aligner.prefix.grad.clone(), model.aligner.gate.grad.clone()))
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(recomputed, plain, rtol=1e-6, atol=1e-8)


def test_bf16_model_keeps_its_dtype():
    """Aligner's tensors follow the base model's dtype, so a bf16 model stays bf16 end to end."""
    model = add_aligner(load_model("tiny-random:llama", dtype="bf16"), tokens=1, start_layer=0)
    assert model.aligner.prefix.dtype == model.aligner.gate.dtype == torch.bfloat16
    set_random_adapter(model)
    with torch.no_grad():
        assert model(ids_batch()).logits.dtype == torch.bfloat16


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_save_load_gives_identical_logits(tmp_path, arch):
    model = add_aligner(tiny(arch), tokens=2, start_layer=1)
    set_random_adapter(model, seed=7)
    x = ids_batch(8)
    with torch.no_grad():
        expected = model(x).logits
    save_aligner(model, tmp_path / "adapter")
    meta = read_aligner_config(tmp_path / "adapter")
    assert meta["tokens"] == 2 and meta["start_layer"] == 1 and meta["trainable_params"] == 2 * 64 + 4
    assert meta["base_model"] == model.config._name_or_path
    assert (tmp_path / "adapter" / "aligner.safetensors").stat().st_size < 4096  # a small file

    fresh = load_aligner(tiny(arch), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(fresh(x).logits, expected)
    # loading onto a model that already carries an Aligner of the same shape only swaps the weights
    again = load_aligner(add_aligner(tiny(arch), tokens=2, start_layer=1), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(again(x).logits, expected)


def test_load_model_with_adapter_path(tmp_path):
    """`load_model(spec, adapter=PATH)` (through rayalign.models.adapters) applies a saved Aligner."""
    model = add_aligner(tiny(), tokens=1, start_layer=1)
    set_random_adapter(model, seed=9)
    x = ids_batch(9)
    with torch.no_grad():
        expected = model(x).logits
    save_aligner(model, tmp_path / "a")
    served = load_model("tiny-random:llama", adapter=str(tmp_path / "a"))
    with torch.no_grad():
        assert torch.equal(served(x).logits, expected)


def test_remove_aligner_restores_base():
    model = tiny()
    x = ids_batch()
    with torch.no_grad():
        base = model(x).logits
        add_aligner(model, tokens=1, start_layer=0)
        set_random_adapter(model)
        remove_aligner(model)
        assert torch.equal(model(x).logits, base)
    assert getattr(model, "aligner", None) is None


def test_clear_errors(tmp_path):
    model = tiny()
    with pytest.raises(AlignerError, match=r"start_layer=2.*\[0, 1\]"):
        add_aligner(model, tokens=1, start_layer=2)  # the default start_layer does not fit 2 layers
    with pytest.raises(AlignerError, match="tokens=0"):
        add_aligner(model, tokens=0, start_layer=0)
    add_aligner(model, tokens=1, start_layer=0)
    with pytest.raises(AlignerError, match="already has an Aligner"):
        add_aligner(model, tokens=1, start_layer=0)
    with pytest.raises(AlignerError, match="not an Aligner adapter"):
        load_aligner(tiny(), tmp_path)
    save_aligner(model, tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "aligner_config.json").read_text())
    meta["hidden_size"] = 576
    (tmp_path / "a" / "aligner_config.json").write_text(json.dumps(meta))
    with pytest.raises(AlignerError, match="hidden_size=576"):
        load_aligner(tiny(), tmp_path / "a")
    save_aligner(add_aligner(tiny(), tokens=1, start_layer=0), tmp_path / "b")
    with pytest.raises(AlignerError, match="start_layer=1"):
        load_aligner(add_aligner(tiny(), tokens=1, start_layer=1), tmp_path / "b")

"""Model specs resolve to folders; bad specs fail with a message saying what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rayalign.models.loader import ModelSpecError, load_model, load_tokenizer, parse_dtype, resolve_model_path


def test_tiny_random_is_deterministic_and_small(tiny_model_path):
    m = load_model("tiny-random:llama")
    cfg = m.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (2, 64, 4, 2)
    assert cfg.vocab_size == 49152 and next(m.parameters()).dtype == torch.float32
    again = load_model(tiny_model_path)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), again.state_dict().values()))
    assert resolve_model_path("tiny-random:llama") == tiny_model_path


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_other_tiny_archs(arch):
    m = load_model(f"tiny-random:{arch}")
    assert m.config.model_type == arch and m.config.num_hidden_layers == 2


def test_tokenizer_has_chat_template(tokenizer):
    assert tokenizer.chat_template and tokenizer.pad_token_id is not None
    assert "<|im_start|>" in tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)


@pytest.mark.parametrize(
    "spec,match",
    [
        ("builtin:gpt5", "unknown builtin model"),
        ("tiny-random:gpt2", "unknown tiny-random arch"),
        ("./no/such/folder", "neither a local folder nor a hub id"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ModelSpecError, match=match):
        resolve_model_path(spec)


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelSpecError, match=r"holds no config\.json"):
        resolve_model_path(str(tmp_path))


def test_hub_id_offline_gives_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelSpecError) as err:
        load_tokenizer("some-org/some-model-that-is-not-cached")
    msg = str(err.value)
    assert "'some-org/some-model-that-is-not-cached' is a hub id" in msg and "HF_HUB_OFFLINE" in msg
    assert "local folder" in msg and "s3://" in msg and "unset HF_HUB_OFFLINE" in msg
    assert str(tmp_path) in msg


def test_dtypes():
    assert parse_dtype(None, "cpu") == torch.float32
    assert parse_dtype("auto", "cuda:0") == torch.bfloat16
    assert parse_dtype("bf16") == torch.bfloat16
    with pytest.raises(ModelSpecError, match="unknown dtype"):
        parse_dtype("int3")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_embedded_smollm2_answers_a_chat_prompt():
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer("builtin:smollm2-135m-instruct")
    model = load_model("builtin:smollm2-135m-instruct")
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
    # the cached folder is a plain HF checkpoint any tool can load
    plain = AutoModelForCausalLM.from_pretrained(resolve_model_path("builtin:smollm2-135m-instruct"))
    assert plain.config.vocab_size == 49152


def test_meta_build_then_fill_equals_from_pretrained(tiny_model_path):
    """Parameters start as shapes only (meta); buffers (rotary inv_freq) are real; the fill reads
    every parameter once (tied embeddings once) and gives from_pretrained's exact model."""
    import torch

    from rayalign.models.loader import build_on_meta, fill_from_safetensors, load_model

    model = build_on_meta("tiny-random:llama")
    assert all(p.is_meta for p in model.parameters())
    assert not any(b.is_meta for b in model.buffers())
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    model.to_empty(device="cpu")
    model.tie_weights()  # plain to_empty unties (FSDP2's keeps the tie: the training path)
    with torch.no_grad():
        for n, b in model.named_buffers():
            b.copy_(buffers[n])
    read = fill_from_safetensors(model, "tiny-random:llama")
    ref = load_model("tiny-random:llama", dtype="fp32")
    assert read == sum(p.numel() for p in ref.parameters())  # unique parameters, tied ones once
    assert model.lm_head.weight is model.model.embed_tokens.weight
    got, want = model.state_dict(), ref.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(model.eval()(input_ids=ids).logits, ref(input_ids=ids).logits)


def test_model_from_a_bucket_is_downloaded_once_and_loads(tiny_model_path, s3_bucket):
    from rayalign import storage
    from rayalign.models.loader import ModelSpecError, resolve_model_path

    storage.upload_dir(tiny_model_path, f"{s3_bucket}/m/tiny")
    first = resolve_model_path(f"{s3_bucket}/m/tiny")
    assert first == resolve_model_path(f"{s3_bucket}/m/tiny")  # the node cache, keyed by content
    assert (Path(first) / "config.json").read_text() == (Path(tiny_model_path) / "config.json").read_text()
    storage.write_text(f"{s3_bucket}/empty/readme.txt", "no model here")
    with pytest.raises(ModelSpecError, match=r"no config\.json"):
        resolve_model_path(f"{s3_bucket}/empty")

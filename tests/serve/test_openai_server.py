"""A real Ray Serve app on 127.0.0.1 (tiny-random:llama, hf backend), driven by the official
`openai` client and by raw httpx for the malformed requests the client would never send.

One app for the whole module (startup costs seconds). Expected texts are computed in-process
with the same engine (`make_engine` on the same spec) at temperature 0: the endpoint must return
exactly what the engine returns, and the token counts must equal the tokenizer's.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

import httpx
import openai
import pytest
from serve_helpers import engine_stats

from ray_ports import free_port
from rayalign.generate.engine import EngineConfig, GenRequest, SamplingParams, cut_at_stop, make_engine
from rayalign.serve.config import ServeConfig

TINY = "tiny-random:llama"
KEY = "sk-test-key"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", params=[False, True], ids=["engine-deployment", "colocated"])
def server(ray_cluster, request):
    from rayalign.serve.server import start, stop

    # autoscaling bounded at one replica: exercises the autoscaling config path while every
    # request (and the stats the tests read) lands on the same replica. Colocated: the ingress
    # holds the engine server itself; auth, limits, batching and 503s must behave the same.
    cfg = ServeConfig(
        model=TINY,
        colocate_engine=request.param,
        app_name=f"rayalign-{'colocated' if request.param else 'split'}",
        port=free_port(),
        api_key=KEY,
        engine_num_cpus=0.5,
        autoscaling={"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 2},
        max_body_bytes=32 * 1024,
        max_ongoing_requests=4,
        max_queued_requests=8,
        batch={"max_batch_size": 4, "batch_wait_timeout_s": 0.05},
    )
    url = start(cfg)
    yield cfg, url
    stop(cfg)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def ref_engine():
    """The same engine in this process: the reference for every generated text."""
    return make_engine(EngineConfig(backend="hf", model=TINY))


def _raw(server, path: str, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}", **kw.pop("headers", {})}
    return httpx.post(server[1] + path, headers=headers, timeout=60, **kw)


def _err(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# -- happy paths through the official client -----------------------------------------------------


def test_models_and_health(server, client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [TINY]
    assert client.models.retrieve(TINY).id == TINY
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    h = httpx.get(server[1] + "/health", timeout=30)  # no key needed: probes must work
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["max_context"] == 2048


def test_chat_matches_engine_and_counts_tokens(client, ref_engine, tokenizer):
    msgs = [{"role": "user", "content": "Name three colours."}]
    r = client.chat.completions.create(model=TINY, messages=msgs, max_tokens=12, temperature=0)
    [ref] = ref_engine.generate([GenRequest(messages=msgs, params=SamplingParams(max_tokens=12))])
    assert r.choices[0].message.content == ref.texts[0]
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == ref.finish_reasons[0]
    # prompt tokens = the ChatML rendering of the messages, counted by the tokenizer itself
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert r.usage.prompt_tokens == len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert r.usage.completion_tokens == ref.completion_tokens[0]
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completions_with_stop(client, ref_engine):
    [ref] = ref_engine.generate([GenRequest(prompt="Once upon a time", params=SamplingParams(max_tokens=16))])
    r = client.completions.create(model=TINY, prompt="Once upon a time", max_tokens=16, temperature=0)
    assert r.choices[0].text == ref.texts[0]
    assert r.usage.completion_tokens == ref.completion_tokens[0]
    # a stop string taken from the middle of the greedy text cuts it there, reason "stop"
    full = ref.texts[0]
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    r2 = client.completions.create(model=TINY, prompt="Once upon a time", max_tokens=16, temperature=0, stop=[stop])
    assert r2.choices[0].text == cut_at_stop(full, [stop])[0]
    assert r2.choices[0].finish_reason == "stop"


def test_streaming_reassembles_to_non_stream_text(client):
    kw = dict(model=TINY, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=20, temperature=0)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([d for d in deltas if d]) > 1  # really streamed, not one blob
    assert "".join(deltas) == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # n=2 streamed: chunks carry their choice index; at temperature 0 both equal the non-stream text
    two = list(client.chat.completions.create(stream=True, n=2, **kw))
    for i in (0, 1):
        assert (
            "".join(c.choices[0].delta.content or "" for c in two if c.choices and c.choices[0].index == i)
            == whole.choices[0].message.content
        )
    # completions streaming too
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(model=TINY, prompt="Hello", max_tokens=10, temperature=0, stream=True)
    )
    assert text == client.completions.create(model=TINY, prompt="Hello", max_tokens=10, temperature=0).choices[0].text


def test_n_and_seed_are_reproducible(client):
    kw = dict(model=TINY, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=1.0, n=2, seed=7)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert (
        a.usage.completion_tokens == sum(8 if c.finish_reason == "length" else 0 for c in a.choices)
        or a.usage.completion_tokens <= 16
    )


def test_concurrent_requests_are_batched(server, client):
    def one(i):
        return client.completions.create(model=TINY, prompt=f"Number {i}", max_tokens=8, temperature=0)

    with cf.ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(one, range(4)))
    assert all(o.usage.completion_tokens >= 1 for o in outs)
    stats = engine_stats(server[0].app_name)
    assert max(stats["batch_sizes"]) > 1, stats  # at least two requests shared one engine call


def test_concurrent_streams_progress_at_once(server, client, ref_engine):
    """HF streams share the replica's continuously batched loop: each client's first token comes
    before any stream ends, and each text equals the engine's own greedy answer."""
    go = threading.Barrier(4)

    def one(i):
        go.wait()
        first, text = None, ""
        for ev in client.completions.create(
            model=TINY, prompt=f"Story {i}:", max_tokens=120, temperature=0, stream=True
        ):
            if ev.choices and ev.choices[0].text:
                first = first or time.monotonic()
                text += ev.choices[0].text
        return first, time.monotonic(), text

    with cf.ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(one, range(4)))
    assert max(o[0] for o in outs) < min(o[1] for o in outs), outs
    refs = ref_engine.generate(
        [GenRequest(prompt=f"Story {i}:", params=SamplingParams(max_tokens=120)) for i in range(4)]
    )
    assert [o[2] for o in outs] == [r.texts[0] for r in refs]


# -- bad input: every case with its status ------------------------------------------------------


def test_auth(server, client):
    bad = openai.OpenAI(base_url=server[1] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    r = httpx.post(server[1] + "/v1/chat/completions", json={"model": TINY, "messages": []}, timeout=30)
    assert r.status_code == 401 and _err(r)["code"] == "invalid_api_key"


def test_malformed_json_is_400(server):
    r = _raw(
        server,
        "/v1/chat/completions",
        content=b'{"model": "x", "messages": [',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400 and _err(r)["code"] == "invalid_json"
    r = _raw(server, "/v1/completions", content=b"[1, 2]")
    assert r.status_code == 400 and "JSON object" in _err(r)["message"]


@pytest.mark.parametrize(
    "body,param",
    [
        ({"model": TINY}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": TINY, "messages": []}, "messages"),
        ({"model": TINY, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"model": TINY, "messages": [{"role": "user", "content": "x"}], "temperature": 5}, "temperature"),
        ({"model": TINY, "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}, "max_tokens"),
        ({"model": TINY, "messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
        ({"model": TINY, "messages": [{"role": "user", "content": "x"}], "n": 99}, "n"),
        ({"model": TINY, "messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(server, body, param):
    r = _raw(server, "/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert _err(r)["param"] == param and param.split(".")[0] in _err(r)["message"]


def test_empty_prompt_is_400(server):
    r = _raw(server, "/v1/completions", json={"model": TINY, "prompt": ""})
    assert r.status_code == 400 and _err(r)["param"] == "prompt" and _err(r)["code"] == "empty_prompt"


def test_unknown_model_is_404(server, client):
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert ei.value.status_code == 404 and ei.value.code == "model_not_found"
    r = _raw(server, "/v1/completions", json={"model": "gpt-9", "prompt": "x"})
    assert r.status_code == 404 and _err(r)["param"] == "model"
    assert httpx.get(server[1] + "/v1/nothing", timeout=30).status_code == 404


def test_prompt_longer_than_context_is_400_with_counts(server, client, tokenizer):
    prompt = "hello " * 2100
    n_prompt = len(tokenizer(prompt)["input_ids"])
    with pytest.raises(openai.BadRequestError) as ei:
        client.completions.create(model=TINY, prompt=prompt, max_tokens=4)
    err = ei.value.body
    assert err["code"] == "context_length_exceeded" and err["param"] == "prompt"
    assert "2048" in err["message"] and f"{n_prompt} tokens" in err["message"]
    # fits alone, but not with the requested completion: also 400, naming both numbers
    short = "hello " * 1000
    n_short = len(tokenizer(short)["input_ids"])
    r = _raw(server, "/v1/completions", json={"model": TINY, "prompt": short, "max_tokens": 2048 - n_short + 1})
    assert r.status_code == 400 and f"{n_short} tokens + {2048 - n_short + 1}" in _err(r)["message"]
    # streaming requests get the same status before any event is sent
    r = _raw(server, "/v1/completions", json={"model": TINY, "prompt": prompt, "stream": True})
    assert r.status_code == 400 and _err(r)["code"] == "context_length_exceeded"


def test_body_over_limit_is_413(server):
    big = {"model": TINY, "messages": [{"role": "user", "content": "x" * 40_000}]}
    r = _raw(server, "/v1/chat/completions", json=big)
    assert r.status_code == 413 and _err(r)["code"] == "request_too_large"

    def chunked():  # no Content-Length: the limit must hold while reading the stream
        for _ in range(40):
            yield b"x" * 1024

    r = _raw(server, "/v1/chat/completions", content=chunked())
    assert r.status_code == 413


def test_overload_gives_503_never_a_crash(server, client):
    """Engine: 4 ongoing + 8 queued. 40 simultaneous requests: the excess is refused fast with
    503 + Retry-After, everything accepted completes, and the server still answers afterwards."""

    def one(i):
        return _raw(
            server, "/v1/completions", json={"model": TINY, "prompt": f"load {i}", "max_tokens": 64, "temperature": 0}
        )

    with cf.ThreadPoolExecutor(40) as ex:
        rs = list(ex.map(one, range(40)))
    codes = [r.status_code for r in rs]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) >= 1 and codes.count(200) >= 4, codes
    refused = next(r for r in rs if r.status_code == 503)
    assert _err(refused)["code"] == "overloaded" and refused.headers.get("retry-after") == "1"
    assert client.completions.create(model=TINY, prompt="after", max_tokens=2).choices  # still serving


def test_client_disconnect_mid_stream_frees_the_slot(server, client):
    s0 = engine_stats(server[0].app_name)
    before, d0 = s0["streams_cancelled"], s0["deltas_streamed"]
    body = {"model": TINY, "prompt": "Hi", "max_tokens": 2000, "temperature": 0, "stream": True}
    with httpx.stream(
        "POST", server[1] + "/v1/completions", json=body, timeout=60, headers={"Authorization": f"Bearer {KEY}"}
    ) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]  # a few events, then hang up
    assert any(line.startswith("data: {") for line in got)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        s = engine_stats(server[0].app_name)
        if s["active_streams"] == 0 and s["streams_cancelled"] > before:
            break
        time.sleep(0.2)
    assert s["active_streams"] == 0 and s["streams_cancelled"] == before + 1, s
    # generation really stopped: no more deltas are produced, far fewer than the 2000 asked for
    time.sleep(1.0)
    after = engine_stats(server[0].app_name)
    assert after["deltas_streamed"] == s["deltas_streamed"] and after["deltas_streamed"] - d0 < 1500, after
    # the freed slot serves the next request at once
    assert client.completions.create(model=TINY, prompt="next", max_tokens=2).choices

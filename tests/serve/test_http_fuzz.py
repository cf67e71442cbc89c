"""Property-based fuzzing of the HTTP API (hypothesis) on a real Serve app on 127.0.0.1.

≥ 2,000 generated requests: valid bodies with one field replaced by any JSON value (every type in
every field), huge and negative numbers, unknown fields, mutated bytes and invalid UTF-8, odd
headers; plus slow and abandoned clients on raw sockets. Every answer must be a 2xx, or a 4xx/503
whose body is OpenAI's error shape; the server answers /health afterwards. The tiny model with
`default_max_tokens: 2` keeps valid requests cheap; the time bound is the test's timeout.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_ports import free_port
from rayalign.serve.config import ServeConfig

TINY = "tiny-random:llama"
pytestmark = pytest.mark.timeout(900)

FIELDS = [
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "logprobs",
    "top_logprobs",
    "response_format",
    "user",
    "echo",
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)
SENT: list[int] = []


@pytest.fixture(scope="module")
def server(ray_cluster):
    from rayalign.serve.server import start, stop

    cfg = ServeConfig(
        model=TINY,
        port=free_port(),
        app_name="fuzz-app",
        engine_num_cpus=0.5,
        default_max_tokens=2,
        max_body_bytes=16 * 1024,
        max_ongoing_requests=8,
        max_queued_requests=16,
        engine={"max_model_len": 256},
    )
    url = start(cfg)
    with httpx.Client(base_url=url, timeout=60) as client:
        yield cfg, url, client
    stop(cfg, shutdown_serve=False)


def _base(path: str) -> dict:
    if path.endswith("chat/completions"):
        return {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return {"model": TINY, "prompt": "hi", "max_tokens": 2}


def _check(r: httpx.Response) -> None:
    SENT.append(r.status_code)
    assert 200 <= r.status_code < 300 or 400 <= r.status_code < 500 or r.status_code == 503, (r.status_code, r.text)
    if r.status_code >= 400:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str), r.text


@st.composite
def requests(draw):
    path = draw(st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
    body = _base(path)
    mode = draw(st.integers(0, 5))
    if mode <= 2:  # every field, any JSON type
        body[draw(st.sampled_from(FIELDS))] = draw(json_values)
    elif mode == 3:  # numbers at the edges, unknown fields
        body[draw(st.sampled_from(["max_tokens", "n", "seed", "top_logprobs", "logprobs"]))] = draw(
            st.sampled_from([-1, 0, 2**31, 2**63, 2**64, 10**30, -(10**30), 1e308, -1e308, 0.5])
        )
        body[draw(st.text(min_size=1, max_size=10))] = draw(json_values)
    raw = json.dumps(body).encode()
    if mode == 4:  # mutated bytes: flips, cuts, invalid UTF-8
        data = bytearray(raw)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.sampled_from([0xFF, 0xC3, 0x00, ord("{"), ord('"'), ord("]")]))
        raw = bytes(data[: draw(st.integers(0, len(data)))])
    if mode == 5:
        raw = draw(st.binary(max_size=200))
    headers = draw(
        st.sampled_from(
            [
                {},
                {"content-type": "text/plain"},
                {"authorization": "Basic abc"},
                {"content-type": "application/json; charset=latin-1"},
            ]
        )
    )
    return path, raw, headers


@settings(
    max_examples=2000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(req=requests())
def test_fuzzed_requests_get_2xx_or_openai_shaped_4xx_503(server, req):
    path, raw, headers = req
    _check(server[2].post(path, content=raw, headers=headers))


def test_slow_and_abandoned_clients_then_server_still_up(server):
    _, url, client = server
    host, port = url.split("//")[1].split(":")
    socks = []
    for i in range(6):  # abandoned mid-headers, mid-body, and after a declared huge body
        s = socket.create_connection((host, int(port)), timeout=10)
        head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        if i % 3 == 0:
            s.sendall(head.encode())  # never finishes the headers
        elif i % 3 == 1:
            s.sendall((head + 'Content-Length: 500\r\n\r\n{"model": ').encode())  # body cut short
        else:
            s.sendall((head + "Content-Length: 99999999\r\n\r\n").encode())  # over the limit → 413
        socks.append(s)
    slow = socket.create_connection((host, int(port)), timeout=30)
    body = json.dumps(_base("/v1/completions")).encode()
    slow.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    for i in range(0, len(body), 8):  # a slow client still gets its answer
        slow.sendall(body[i : i + 8])
        time.sleep(0.05)
    status = slow.recv(64).split(b" ")[1]
    assert status == b"200", status
    for s in [*socks, slow]:
        s.close()
    assert client.get("/health").status_code == 200
    r = client.post("/v1/completions", json=_base("/v1/completions"))
    assert r.status_code == 200 and r.json()["choices"][0]["text"] is not None
    assert len(SENT) >= 2000 or not SENT  # the property test above ran its full 2,000 requests

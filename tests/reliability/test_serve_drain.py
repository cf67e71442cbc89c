"""Serving replicas drain when Serve stops them (scale-down, redeploy, `serve delete`, a node drained
before its preemption): no new request reaches them, and a stream in flight finishes whole within
`graceful_shutdown_timeout_s`. Measured with the official `openai` client, streaming from the tiny
model on the hf backend; the same stream without the grace is cut (so the drain is what saves it)."""

from __future__ import annotations

import threading
import time

import openai
import pytest

from ray_ports import free_port
from rayalign.serve.config import ServeConfig

TINY = "tiny-random:llama"
TOKENS = 200
PORT = free_port()  # both cases: Serve keeps the HTTP port of its first start on a cluster


def stream(client: openai.OpenAI, first: threading.Event | None = None) -> dict:
    """One streamed completion: its text, finish reason, whether [DONE]-terminated, or the error."""
    text, finish, error = [], None, None
    try:
        for ev in client.completions.create(model=TINY, prompt="Drain", max_tokens=TOKENS, temperature=0, stream=True):
            if ev.choices:
                text.append(ev.choices[0].text)
                finish = ev.choices[0].finish_reason or finish
            if first is not None and text:
                first.set()
    except Exception as e:  # a cut stream: the connection dropped or an error event
        error = f"{type(e).__name__}: {e}"
    return {"text": "".join(text), "finish": finish, "error": error, "end": time.monotonic()}


@pytest.fixture(scope="module", autouse=True)
def _serve_shut_down_after(ray_cluster):
    """Serve keeps its HTTP port for the life of the cluster: later tests start their own."""
    yield
    from rayalign.serve.server import stop

    stop()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("grace", [30.0, 0.0])
def test_a_stream_in_flight_finishes_whole_while_its_replicas_drain(ray_cluster, grace):
    from rayalign.serve.server import start, stop

    cfg = ServeConfig(
        model=TINY,
        port=PORT,
        app_name=f"drain-{int(grace)}",
        engine_num_cpus=0.5,
        stream_interval_ms=0,
        graceful_shutdown_timeout_s=grace,
        graceful_shutdown_wait_loop_s=0.2,
    )
    url = start(cfg)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        reference = stream(client)
        assert reference["error"] is None and reference["finish"] == "length", reference

        first, result = threading.Event(), {}
        reader = threading.Thread(target=lambda: result.update(stream(client, first)))
        reader.start()
        assert first.wait(60), "the stream never started"
        from ray import serve

        t0 = time.monotonic()
        stopper = threading.Thread(target=lambda: serve.delete(cfg.app_name))  # Serve's graceful stop
        stopper.start()
        # a request sent while the replicas drain is not taken by them
        refused = None
        while refused is None and time.monotonic() < t0 + 20:
            try:
                client.completions.create(model=TINY, prompt="new", max_tokens=4, temperature=0)
            except (openai.NotFoundError, openai.APIConnectionError) as e:
                refused = (type(e).__name__, time.monotonic())
            time.sleep(0.1)
        reader.join(timeout=90)
        stopper.join(timeout=90)
        stopped = time.monotonic()
    finally:
        stop(cfg, shutdown_serve=False)
    assert refused is not None, "requests were still taken after the stop began"
    if grace:
        assert result["error"] is None, result["error"]
        assert (result["text"], result["finish"]) == (reference["text"], reference["finish"])
        assert refused[1] < result["end"], "the new request was refused only after the stream ended"
        assert stopped - t0 < grace
    else:  # no grace: the replicas go at once and the stream is cut short
        assert result["error"] is not None or result["text"] != reference["text"], result

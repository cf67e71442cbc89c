"""`rayalign serve` as a user runs it: a subprocess that joins the session's Ray cluster, prints
the URL, answers the official client, and on Ctrl-C (SIGINT) deletes its app and exits 0."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from serve_helpers import wait_for_line

from ray_ports import free_port

pytestmark = pytest.mark.timeout(240)


def test_cli_serves_until_ctrl_c(ray_cluster, tmp_path):
    from ray import serve

    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rayalign.cli",
                "serve",
                "--model",
                "tiny-random:llama",
                "--port",
                str(port),
                "app_name=cli-app",
                "engine_num_cpus=0.5",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            # started as a shell script's background job is: SIGINT ignored (the CLI must still stop)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        try:
            wait_for_line(proc, log, "serving tiny-random:llama", 180)
            text = log.read_text()
            url = re.search(r"serving tiny-random:llama \(hf\) at (\S+)", text).group(1)
            # the asked port, unless Serve already runs on this cluster (an earlier test file
            # started it): then the CLI warns and prints the port Serve keeps
            assert url == f"http://127.0.0.1:{port}/v1" or "it keeps that address" in text, text
            # the printed URL is the one that works
            client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
            assert [m.id for m in client.models.list().data] == ["tiny-random:llama"]
            r = client.chat.completions.create(
                model="tiny-random:llama", max_tokens=3, temperature=0, messages=[{"role": "user", "content": "hi"}]
            )
            assert r.usage.completion_tokens >= 1
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        except BaseException:
            # a failed run must not leave its app on the shared cluster: it would hold the route
            # prefix every later Serve test deploys at
            with contextlib.suppress(Exception):
                serve.delete("cli-app")
            raise
        finally:
            if proc.poll() is None:
                proc.kill()
    assert "shutting down" in log.read_text()
    # its app is gone from the cluster: the URL no longer answers (Serve shut down with the CLI when
    # no other app was left, or Serve's proxy knows no such route). Asked over HTTP: this process's
    # Serve client may hold a handle to the controller the CLI just stopped.
    try:
        gone = httpx.get(url + "/models", timeout=10).status_code == 404
    except httpx.TransportError:
        gone = True
    assert gone


def test_cli_serves_a_model_from_a_bucket(s3_bucket, tiny_model_path, tmp_path):
    """`rayalign serve --model s3://…`: the folder is fetched once into the node cache (never turned
    into a local path of the URI) and answers the official client like the local folder does."""
    from rayalign import storage

    uri = s3_bucket + "/models/tiny"
    storage.upload_dir(tiny_model_path, uri)
    port = free_port()
    cache = tmp_path / "cache"
    # its own local Ray cluster (no RAY_ADDRESS): the replica inherits the S3 endpoint and keys
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONUNBUFFERED="1", RAYALIGN_CACHE=str(cache))
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rayalign.cli", "serve", "--model", uri, "--port", str(port), "engine_num_cpus=0.5"],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
        )
        try:
            wait_for_line(proc, log, f"serving {uri}", 180)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
            assert [m.id for m in client.models.list().data] == [uri]
            ask = {"max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}
            r = client.chat.completions.create(model=uri, **ask)
            assert r.usage.completion_tokens >= 1
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    copies = [p for p in (cache / "remote").iterdir() if p.is_dir()]
    assert len(copies) == 1 and (copies[0] / "config.json").exists()  # one node-local copy
    assert not Path("s3:").exists() and not (Path.cwd() / "s3:").exists()

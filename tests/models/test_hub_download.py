"""`model: org/name` on a fresh machine: downloaded from a model hub, once, with the token from the
environment, and the token nowhere else.

The hub is a small HTTP server on 127.0.0.1 speaking the part of the Hugging Face Hub API that
`huggingface_hub.snapshot_download` uses (read from its source): the revision's repo info
(`/api/models/{repo}/revision/{rev}` → sha), the recursive tree listing
(`/api/models/{repo}/tree/{sha}`) and `HEAD`/`GET /{repo}/resolve/{sha}/{file}` (commit, ETag and
size headers, then the bytes). It serves the tiny random Llama's folder, answers 401 to a request
without the expected `Authorization: Bearer` token, and records every request.

The stage runs in a fresh interpreter (huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE at
import), with HF_HUB_OFFLINE unset, its own empty HF_HOME and HF_TOKEN in its environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

REPO = Path(__file__).resolve().parents[2]
REPO_ID = "tiny-org/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_rayalignTestToken0123456789"


class Hub(BaseHTTPRequestHandler):
    folder: Path
    seen: list[tuple[str, str, str]]  # (method, path, authorization)

    def log_message(self, *args):  # keep the test output clean
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _files(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.folder.iterdir()) if p.is_file()}

    def _route(self, head: bool):
        path = unquote(urlparse(self.path).path)
        if REPO_ID not in path:  # not a request for the model (huggingface_hub asks for other things)
            return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
        self.seen.append((self.command, path, self.headers.get("Authorization", "")))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, b'{"error": "Invalid credentials"}', {"X-Error-Code": "GatedRepo"}, head)
        files = self._files()
        api = f"/api/models/{REPO_ID}/"
        if path.startswith(api + "revision/"):
            info = {"id": REPO_ID, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}
            return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
        if path.startswith(api + "tree/"):
            tree = [
                {"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                for f, b in files.items()
            ]
            return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, head)
        prefix = f"/{REPO_ID}/resolve/"
        if path.startswith(prefix):
            name = path[len(prefix) :].split("/", 1)[1]
            if name not in files:
                return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
            body = files[name]
            etag = f'"{hashlib.sha1(body).hexdigest()}"'
            return self._send(200, body, {"X-Repo-Commit": COMMIT, "ETag": etag}, head)
        return self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, head)

    def do_GET(self):
        self._route(head=False)

    def do_HEAD(self):
        self._route(head=True)


@pytest.fixture
def hub(tiny_model_path):
    seen: list = []
    handler = type("TinyHub", (Hub,), {"folder": Path(tiny_model_path), "seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", seen
    server.shutdown()
    server.server_close()


JOB = """
import json, sys
from rayalign.runtime_env import worker_runtime_env
from rayalign.stages import run_stage

work = sys.argv[1]
outs = []
for run in ("first", "second"):
    cfg = {"inputs": [sys.argv[2]], "output": f"{work}/{run}", "model": sys.argv[3],
           "engine": {"backend": "hf", "dtype": "fp32", "batch_size": 4},
           "params": {"max_tokens": 4}, "pool": {"workers": 0, "limit": 4}}
    result = run_stage("sample", data=cfg)
    outs.append(result.model_dump(mode="json") if hasattr(result, "model_dump") else str(result))
print("SUMMARY " + json.dumps(outs))
print("RUNTIME_ENV " + json.dumps([worker_runtime_env({}, remote=True), worker_runtime_env({}, remote=False)]))
"""


@pytest.mark.timeout(180)
def test_a_hub_id_downloads_once_with_the_token_and_never_shows_it(hub, tmp_path):
    endpoint, seen = hub
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_TOKEN=TOKEN,
        HF_HOME=str(tmp_path / "hf-home"),
        PYTHONPATH=str(REPO / "src"),
        HF_HUB_DISABLE_XET="1",
    )
    run = subprocess.run(
        [sys.executable, "-c", JOB, str(tmp_path / "runs"), str(REPO / "rayjobs/data/tiny/prompts.jsonl"), REPO_ID],
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]

    # every request for the model carried the token, and its files came down once (the second
    # run used the node's cache)
    assert seen and all(auth == f"Bearer {TOKEN}" for _, _, auth in seen)
    gets = [p for m, p, _ in seen if m == "GET" and "/resolve/" in p]
    served = {p.rsplit("/", 1)[1] for p in gets}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= served
    assert len(gets) == len(served), "a file was downloaded twice"
    snapshot = tmp_path / "hf-home" / "hub" / "models--tiny-org--tiny-llama" / "snapshots" / COMMIT
    assert (snapshot / "model.safetensors").exists()

    # the stage ran on the downloaded model
    summaries = json.loads(next(x for x in run.stdout.splitlines() if x.startswith("SUMMARY "))[8:])
    assert all(s["counts"]["ok"] == 4 for s in summaries)

    # ...and the token is in no log, summary, output file or runtime env
    assert TOKEN not in run.stdout and TOKEN not in run.stderr
    for f in (tmp_path / "runs").rglob("*"):
        if f.is_file():
            assert TOKEN.encode() not in f.read_bytes(), f
    runtime_envs = next(x for x in run.stdout.splitlines() if x.startswith("RUNTIME_ENV "))
    assert "HF_TOKEN" not in runtime_envs and endpoint in runtime_envs  # the endpoint (a setting) does travel


@pytest.mark.timeout(120)
def test_a_wrong_token_is_one_clear_error_without_the_token(hub, tmp_path):
    endpoint, seen = hub
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=endpoint, HF_TOKEN="hf_wrongToken987654321", HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=str(REPO / "src"), HF_HUB_DISABLE_XET="1")  # fmt: skip
    code = f"from rayalign.models.loader import resolve_model_path; resolve_model_path({REPO_ID!r})"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=110)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("rayalign.models.loader.ModelSpecError: could not download hub model 'tiny-org/tiny-llama'")
    assert "HF_TOKEN" in last and "s3://" in last and "hf_wrongToken987654321" not in run.stderr
    assert seen and all(auth == "Bearer hf_wrongToken987654321" for _, _, auth in seen)


RAY_JOB = """
import json, sys
import ray
from rayalign.stages import run_stage

work, prompts, chats, model = sys.argv[1:5]
sample = run_stage("sample", data={
    "inputs": [prompts], "output": f"{work}/sample", "model": model,
    "engine": {"backend": "hf", "dtype": "fp32", "batch_size": 4}, "params": {"max_tokens": 4},
    "pool": {"workers": 1, "num_cpus": 0.5, "limit": 4}})
sft = run_stage("sft", data={
    "model": model, "output_dir": f"{work}/sft", "objective": {"name": "sft"},
    "data": {"inputs": [chats], "max_length": 128, "seq_len": 128, "pool": {"workers": 0}},
    "max_steps": 2, "progress": False, "checkpoint": {"every": 0},
    "scaling": {"workers": 1, "cpus_per_worker": 0.5, "report_every": 1}})
from rayalign.train.launcher import FORWARD_ENV  # what Train workers' runtime env may carry
print("RESULT " + json.dumps({"sample_ok": sample.counts.ok, "sft_steps": sft.metrics.get("steps"),
                              "train_env": list(FORWARD_ENV), "job_env": str(ray.get_runtime_context().runtime_env)}))
ray.shutdown()
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_actors_and_train_workers_download_with_the_inherited_token(hub, tmp_path):
    """The token reaches Ray's generation actors and Train workers by inheritance (a 401 would fail
    the stage), and appears in no runtime env and no file Ray wrote (logs included)."""
    endpoint, seen = hub
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "RAY_ADDRESS")}
    ray_dir = Path(tempfile.mkdtemp(prefix="ra-hub-", dir="/tmp"))  # short: Ray's socket paths have a length cap
    env.update(HF_ENDPOINT=endpoint, HF_TOKEN=TOKEN, HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=str(REPO / "src"),
               HF_HUB_DISABLE_XET="1", RAY_TMPDIR=str(ray_dir))  # fmt: skip
    data = REPO / "rayjobs" / "data" / "tiny"
    try:
        run = subprocess.run(
            [sys.executable, "-c", RAY_JOB, str(tmp_path / "runs"), str(data / "prompts.jsonl"),
             str(data / "chat.jsonl"), REPO_ID],
            env=env, capture_output=True, text=True, timeout=280,
        )  # fmt: skip
        ray_files = [f for f in ray_dir.rglob("*") if f.is_file() and not f.is_symlink() and not f.is_socket()]
        leaked = [f for f in ray_files if TOKEN.encode() in f.read_bytes()]
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    out = json.loads(next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))[7:])
    assert out["sample_ok"] == 4 and out["sft_steps"] == 2
    assert seen and all(auth == f"Bearer {TOKEN}" for _, _, auth in seen)
    gets = [p for m, p, _ in seen if m == "GET" and "/resolve/" in p]
    assert len(gets) == len(set(gets)), "a file was downloaded twice on this node"
    assert TOKEN not in out["job_env"] and "HF_TOKEN" not in out["job_env"] and "HF_TOKEN" not in out["train_env"]
    assert endpoint in out["job_env"]  # the hub endpoint is a setting: it travels
    assert TOKEN not in run.stdout + run.stderr
    assert ray_files and leaked == []  # Ray's logs and session files
    for f in (tmp_path / "runs").rglob("*"):
        if f.is_file() and not f.is_symlink():
            assert TOKEN.encode() not in f.read_bytes(), f

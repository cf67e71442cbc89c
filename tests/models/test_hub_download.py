"""`model: org/name` on a fresh machine: downloaded from a model hub, once, with the token from the
environment, and the token nowhere else.

The hub is a small HTTP server on 127.0.0.1 (tests/hub_server.py) speaking the part of the Hugging
Face Hub API that `huggingface_hub.snapshot_download` uses. It serves a tiny random Llama's folder,
answers 401 to a request without the expected `Authorization: Bearer` token, and records every
request.

The stage runs in a fresh interpreter (huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE at
import), with HF_HUB_OFFLINE unset, its own empty HF_HOME and HF_TOKEN in its environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hub_server import COMMIT, MODEL_FILES, REPO_ID, TOKEN, file_gets, serve_hub, vllm_loadable_tiny

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def hub(tiny_model_path):
    with serve_hub(tiny_model_path) as served:
        yield served


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


VLLM_JOB = """
import json, os, sys
from pathlib import Path


def child_envs():
    # the environment of each process this one started (vLLM's engine core): names and the hub's
    # settings, and whether the token is the one given here (never the token itself)
    out = []
    for d in Path("/proc").iterdir():
        try:
            if not d.name.isdigit() or int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) != os.getpid():
                continue
            env = dict(x.split("=", 1) for x in (d / "environ").read_text().split("\\0") if "=" in x)
            title = (d / "cmdline").read_text().replace("\\0", " ")
        except (OSError, ValueError):
            continue
        out.append({"title": title[:80], "HF_ENDPOINT": env.get("HF_ENDPOINT"), "HF_HOME": env.get("HF_HOME"),
                    "token_inherited": env.get("HF_TOKEN") == os.environ["HF_TOKEN"],
                    "offline": env.get("HF_HUB_OFFLINE")})
    return out


def main():
    from rayalign.generate.common import engine_for
    from rayalign.generate.engine import EngineConfig
    from rayalign.stages import run_stage

    work, prompts, model = sys.argv[1:4]
    engine = {"model": model, "dtype": "fp32", "max_model_len": 256, "vllm_kwargs": {"enforce_eager": True}}
    vllm = engine_for(EngineConfig(backend="vllm", **engine))
    cores = child_envs()
    outs = {}
    for backend in ("vllm", "hf"):  # the same stage on the same downloaded model, both engines
        cfg = {"inputs": [prompts], "output": f"{work}/{backend}", "model": model,
               "engine": {**engine, "backend": backend}, "params": {"max_tokens": 8, "temperature": 0.0},
               "pool": {"workers": 0, "limit": 4}}
        result = run_stage("sample", data=cfg)
        outs[backend] = result.model_dump(mode="json") if hasattr(result, "model_dump") else str(result)
    print("RESULT " + json.dumps({"loaded": vllm.llm.model_config.model, "cores": cores, "summaries": outs}))
    vllm.close()


if __name__ == "__main__":  # vLLM spawns its engine core
    main()
"""


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_vllm_engine_downloads_a_hub_id_once_and_its_engine_core_inherits_the_hub_settings(tiny_model_path, tmp_path):
    """`backend: vllm` with `model: org/name`: the hub id is downloaded once into this machine's
    HF_HOME, with the token; vLLM's engine core (a process of its own) runs on that copy and has
    the hub's settings and the token by inheritance; its greedy rows equal the HF engine's on the
    same download; the token is in no log, summary or output file."""
    pytest.importorskip("vllm")
    from rayalign.data.shards import read_dataset

    folder = vllm_loadable_tiny(tiny_model_path, tmp_path / "model")
    home = tmp_path / "hf-home"
    with serve_hub(folder) as (endpoint, seen):
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env.update(HF_ENDPOINT=endpoint, HF_TOKEN=TOKEN, HF_HOME=str(home), PYTHONPATH=str(REPO / "src"),
                   HF_HUB_DISABLE_XET="1")  # fmt: skip
        run = subprocess.run(
            [sys.executable, "-c", VLLM_JOB, str(tmp_path / "runs"), str(REPO / "rayjobs/data/tiny/prompts.jsonl"),
             REPO_ID],
            env=env, capture_output=True, text=True, timeout=290,
        )  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    out = json.loads(next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))[7:])

    # downloaded once (the engine core and the second engine used the node's copy), with the token
    assert seen and all(auth == f"Bearer {TOKEN}" for _, _, auth in seen)
    gets = file_gets(seen)
    assert set(MODEL_FILES) <= set(gets) and len(gets) == len(set(gets)), gets
    snapshot = home / "hub" / "models--tiny-org--tiny-llama" / "snapshots" / COMMIT
    assert out["loaded"] == str(snapshot)

    # vLLM's engine core: a child process with the hub's endpoint, this HF_HOME and the token
    [core] = [c for c in out["cores"] if "EngineCore" in c["title"]] or [out["cores"]]
    assert (core["HF_ENDPOINT"], core["HF_HOME"], core["token_inherited"], core["offline"]) == (
        endpoint, str(home), True, None)  # fmt: skip

    # vLLM ran the downloaded weights: greedy rows equal the HF engine's on the same copy
    vllm_rows = read_dataset(tmp_path / "runs" / "vllm").to_pylist()
    hf_rows = read_dataset(tmp_path / "runs" / "hf").to_pylist()
    assert len(vllm_rows) == 4 and all(r["status"] in ("ok", "truncated") for r in vllm_rows), vllm_rows
    assert len({r["response"] for r in vllm_rows}) == 4  # a real answer to each prompt
    assert [(r["id"], r["response"]) for r in vllm_rows] == [(r["id"], r["response"]) for r in hf_rows]
    assert all(s["counts"]["ok"] == 4 for s in out["summaries"].values()), out["summaries"]

    assert TOKEN not in run.stdout and TOKEN not in run.stderr
    for f in (tmp_path / "runs").rglob("*"):
        if f.is_file():
            assert TOKEN.encode() not in f.read_bytes(), f

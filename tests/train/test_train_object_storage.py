"""Training with everything in an S3 bucket (a real S3 API: moto's server on 127.0.0.1).

The model (`model: s3://...`), the prepared rows (`data.path: s3://...`) and the run folder
(`output_dir: s3://...`) live in the bucket. A `rayalign sft` process is SIGKILLed from the test
once a checkpoint is committed in the bucket; the re-run resumes from that checkpoint and ends with
the loss curve of an uninterrupted local run, and its exported model is in the bucket.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from train_helpers import base_config

from rayalign import storage
from rayalign.train import checkpoint as ckpt
from rayalign.train.config import TrainConfig
from rayalign.train.launcher import launch
from rayalign.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
STEPS = 12


def _sft(config: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "rayalign.cli", "sft", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.timeout(400)
def test_stage_killed_after_a_checkpoint_resumes_from_the_bucket(
    tmp_path, chat_packed, tiny_model_path, s3_bucket, monkeypatch
):
    monkeypatch.setenv("RAYALIGN_CACHE", str(tmp_path / "cache"))  # the runs' node-local staging, seen below
    storage.upload_dir(tiny_model_path, f"{s3_bucket}/models/tiny")
    storage.upload_dir(chat_packed, f"{s3_bucket}/data/chat")
    common = dict(max_steps=STEPS, checkpoint={"every": 2, "keep_last": 2})
    reference = launch(TrainConfig.model_validate(base_config(tmp_path / "local", chat_packed, **common)))

    out = f"{s3_bucket}/runs/sft"
    cfg = base_config(out, f"{s3_bucket}/data/chat", model=f"{s3_bucket}/models/tiny", **common)
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    marker = f"{out}/checkpoints/step-000002/COMPLETE"
    proc = _sft(path)
    deadline = time.monotonic() + 240
    while not storage.exists(marker) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stdout.read()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not storage.exists(f"{out}/summary.json")  # it really died mid-run
    logged = [r["step"] for r in read_metrics(out)]
    assert logged and max(logged) < STEPS

    proc = _sft(path)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert "resumed from s3://" in output
    summary = storage.read_json(f"{out}/summary.json")
    assert summary["details"]["resumed_at"] >= 2 and summary["metrics"]["steps"] == STEPS
    recs = read_metrics(out)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    want = [r["loss"] for r in read_metrics(tmp_path / "local")]
    assert [r["loss"] for r in recs] == pytest.approx(want, abs=1e-5)
    assert summary["checkpoint"] == f"{out}/final" and storage.exists(f"{out}/final/.rayalign-export.json")
    kept = [storage.basename(p) for p in storage.glob(f"{out}/checkpoints", "step-*")]
    assert kept == ["step-000010", "step-000012"]  # keep_last on the bucket too
    for step in range(4, STEPS + 1, 2):  # an uploaded checkpoint leaves no copy on the node's disk
        staged = ckpt.staging_dir(ckpt.step_dir(out, step))
        assert staged.parent == tmp_path / "cache" / "staging" and not staged.exists()

    import torch
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(storage.local_copy(f"{out}/final")).state_dict()
    b = AutoModelForCausalLM.from_pretrained(reference.checkpoint).state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert not torch.equal(
        a["model.layers.0.self_attn.q_proj.weight"],
        AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()["model.layers.0.self_attn.q_proj.weight"],
    )


@pytest.mark.timeout(400)
def test_resume_reads_a_two_worker_checkpoint_in_place_from_the_bucket(tmp_path, chat_packed, s3_bucket):
    """2 gloo workers train 2 of 4 steps into s3:// and stop; ONE process resumes from the bucket (DCP
    reshards 2 → 1) and logs the uninterrupted local run's steps 3–4 (≤ 1e-5). The checkpoint is read
    in place: nothing of it is copied into the node's download cache."""
    from spawn_helpers import spawn_trainers

    from rayalign.train.trainer import train_loop

    common = dict(max_steps=4, data={"shuffle": False}, torch_threads=1, checkpoint={"every": 2})
    train_loop(base_config(tmp_path / "local", chat_packed, micro_batch_size=1, grad_accum=2, **common))
    want = [r["loss"] for r in read_metrics(tmp_path / "local")]

    out = f"{s3_bucket}/runs/two-then-one"
    spawn_trainers(base_config(out, chat_packed, grad_accum=1, stop_at_step=2, **common), 2, tmp_path / "ranks")
    assert storage.exists(f"{out}/checkpoints/step-000002/COMPLETE")
    assert len(storage.glob(f"{out}/checkpoints/step-000002/dcp", "*.distcp")) == 2  # one shard file per rank
    cache = storage.cache_root() / "remote"
    before = set(cache.iterdir()) if cache.exists() else set()
    result = train_loop(base_config(out, chat_packed, grad_accum=2, **common))
    assert result.details["resumed_at"] == 2
    got = [r["loss"] for r in read_metrics(out)]
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]
    assert got == pytest.approx(want, abs=1e-5), (got, want)
    after = set(cache.iterdir()) if cache.exists() else set()
    assert not [p for p in after - before if (p / "dcp").exists() or (p / "trainer.pt").exists()]

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
def test_stage_killed_after_a_checkpoint_resumes_from_the_bucket(tmp_path, chat_packed, tiny_model_path, s3_bucket):
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

    import torch
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(storage.local_copy(f"{out}/final")).state_dict()
    b = AutoModelForCausalLM.from_pretrained(reference.checkpoint).state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert not torch.equal(
        a["model.layers.0.self_attn.q_proj.weight"],
        AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()["model.layers.0.self_attn.q_proj.weight"],
    )

"""Spot preemption: SIGTERM to a training process (a node's notice before it goes) makes it finish the
step in flight, save a checkpoint within the grace period and stop; the next run resumes there and
its loss tail equals the uninterrupted run's, so at most the step in flight is redone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rayalign.train import checkpoint as ckpt
from rayalign.train.config import TrainConfig
from rayalign.train.launcher import launch
from rayalign.train.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from train_helpers import base_config

REPO = Path(__file__).resolve().parents[2]
STEPS = 8
GRACE_S = 30  # GCP's spot notice; AWS gives 120 s


def sft(config: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "rayalign.cli", "sft", str(config)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.timeout(300)
def test_sigterm_saves_a_checkpoint_within_the_grace_period(tmp_path, chat_packed):
    common = dict(max_steps=STEPS, checkpoint={"every": 100, "keep_last": 2})  # no periodic checkpoint
    launch(TrainConfig.model_validate(base_config(tmp_path / "full", chat_packed, **common)))
    full = [r["loss"] for r in read_metrics(tmp_path / "full")]

    out = tmp_path / "spot"
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump(base_config(out, chat_packed, **common)))
    proc = sft(config)
    deadline = time.monotonic() + 200
    while not (out / "metrics.jsonl").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    while proc.poll() is None and len((out / "metrics.jsonl").read_text().splitlines()) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before its notice:\n{proc.stdout.read() if proc.stdout else ''}"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=GRACE_S)
    took = time.monotonic() - t0
    assert took < GRACE_S and proc.returncode == -signal.SIGTERM, (proc.returncode, output)
    assert "[train] SIGTERM: checkpoint saved at step" in output, output

    logged = [r["step"] for r in read_metrics(out)]
    saved = ckpt.latest_checkpoint(out)
    assert saved is not None and 2 <= max(logged) < STEPS, (logged, saved)
    assert saved == ckpt.step_dir(out, max(logged))  # every finished step is in the checkpoint
    assert ckpt.checkpoint_problem(saved) is None

    resumed = sft(config)
    output, _ = resumed.communicate(timeout=200)
    assert resumed.returncode == 0, output
    assert f"resumed from {saved}" in output
    recs = read_metrics(out)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in recs] == pytest.approx(full, abs=1e-6)

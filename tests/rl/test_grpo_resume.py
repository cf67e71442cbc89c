"""A GRPO run SIGKILLed (from outside, as a real `rayalign grpo` process) after its step-2 checkpoint
resumes with the uninterrupted run's tail: the same rewards (rollout seeds are a function of seed, step
and prompt row, the engine reloads the resumed policy) and the same losses/gradient norms (≤ 1e-5: the
policy, AdamW moments, schedule and prompt position all come back from the checkpoint).

Asynchronously (max_staleness 2) the kill lands with the rollouts of the next two steps in flight:
the checkpoint holds the groups sampled but not trained on, the resumed run trains on exactly those
(same rewards, lengths and staleness per step, none dropped) and samples the rest from the resumed
policy, so its tail is the uninterrupted run's too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from grpo_helpers import TINY, grpo_config, write_prompts

from rayalign.stages import run_stage
from rayalign.train.checkpoint import complete_checkpoints

pytestmark = pytest.mark.timeout(300)
SRC = str(Path(__file__).resolve().parents[2] / "src")
STEPS = 10


def config(tmp: Path, name: str, prompts: str, staleness: int) -> dict:
    # a length penalty gives a random model's rollouts different rewards, so every step updates
    return grpo_config(
        tmp / name,
        TINY,
        prompts,
        max_steps=STEPS,
        checkpoint={"every": 2, "keep_last": 2},
        rewards=[{"name": "length", "params": {"target": 4, "unit": "chars"}}],
        aggregation="token",
        inner_epochs=2,
        asynchronous={"max_staleness": staleness},
        off_policy={"correction": "tis" if staleness else "none"},
    )


def records(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def start_cli(cfg_path: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC}
    with log.open("w") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "rayalign.cli", "grpo", str(cfg_path)], env=env, stdout=fh, stderr=fh
        )


@pytest.mark.parametrize("staleness", [0, 2])
def test_killed_grpo_run_resumes_with_the_uninterrupted_tail(tmp_path, staleness):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    run_stage("grpo", data=config(tmp_path, "full", prompts, staleness))
    full = records(tmp_path / "full")

    cfg_path = tmp_path / "killed.yaml"
    cfg_path.write_text(yaml.safe_dump(config(tmp_path, "killed", prompts, staleness)))
    out = tmp_path / "killed"
    proc = start_cli(cfg_path, tmp_path / "first.log")
    deadline = time.time() + 180
    while not complete_checkpoints(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = complete_checkpoints(out)
    assert done and not (out / "summary.json").exists(), "the kill must land mid-run"
    killed_at = int(Path(done[-1]).name.split("-")[1])
    assert killed_at < STEPS
    in_flight = json.loads((Path(done[-1]) / "rollouts.json").read_text())["ranks"][0]
    expected = list(range(killed_at, min(killed_at + staleness, STEPS)))  # 0-based steps after the checkpoint
    assert sorted(map(int, in_flight)) == expected

    again = start_cli(cfg_path, tmp_path / "second.log")
    assert again.wait(timeout=240) == 0, (tmp_path / "second.log").read_text()[-3000:]
    resumed = records(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["details"]["resumed_at"] >= killed_at
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(killed_at + 1, STEPS + 1):
        a, b = full[step], resumed[step]
        assert a["reward_mean"] == b["reward_mean"] and a["response_length"] == b["response_length"], step
        assert a["staleness_mean"] == b["staleness_mean"] == min(step - 1, staleness), step
        assert b["dropped_groups"] == 0.0, step
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5), step
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], abs=1e-5), step
    # the tail is not constant: the comparison above covers a moving run
    assert len({round(full[s]["loss"], 6) for s in range(killed_at + 1, STEPS + 1)}) > 1

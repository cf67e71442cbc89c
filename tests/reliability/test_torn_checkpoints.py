"""Torn checkpoints are never loaded: a truncated shard, a lost file, or a marker written over
incomplete files makes resume fall back to the newest whole checkpoint, with a warning naming the
folder and what is wrong, and the resumed loss tail equals the uninterrupted run's."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest

from rayalign.train import checkpoint as ckpt
from rayalign.train.config import TrainConfig
from rayalign.train.launcher import launch
from rayalign.train.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from train_helpers import base_config

COMMON = dict(max_steps=5, optim={"warmup_steps": 1}, checkpoint={"every": 2, "keep_last": 3})


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, chat_packed):
    """An uninterrupted 5-step run, and one stopped after step 4 (checkpoints at steps 2 and 4)."""
    root = tmp_path_factory.mktemp("torn")
    launch(TrainConfig.model_validate(base_config(root / "full", chat_packed, **COMMON)))
    launch(TrainConfig.model_validate(base_config(root / "part", chat_packed, stop_at_step=4, **COMMON)))
    steps = sorted(p.name for p in (root / "part" / "checkpoints").iterdir())
    assert steps == ["step-000002", "step-000004"]
    return root


def shard(step_dir: Path) -> Path:
    return next(p for p in sorted((step_dir / "dcp").iterdir()) if p.suffix == ".distcp")


def truncate(step_dir: Path) -> str:
    f = shard(step_dir)
    size = f.stat().st_size
    with open(f, "r+b") as fh:
        fh.truncate(size // 2)
    return f"dcp/{f.name} has {size // 2} bytes, {size} were written"


def lose_file(step_dir: Path) -> str:
    (step_dir / "trainer.pt").unlink()
    return "trainer.pt is missing"


def old_marker_over_torn_shard(step_dir: Path) -> str:
    """A marker without a file list (as older versions wrote) over a shard cut short: DCP's metadata
    is what catches it."""
    (step_dir / ckpt.COMPLETE).write_text("4")
    f = shard(step_dir)
    f.write_bytes(f.read_bytes()[:100])
    return f"dcp/{f.name} has 100 bytes, dcp/.metadata needs"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("corrupt", [truncate, lose_file, old_marker_over_torn_shard])
def test_torn_checkpoint_falls_back_to_the_last_whole_one(runs, chat_packed, tmp_path, caplog, corrupt):
    out = tmp_path / "run"
    shutil.copytree(runs / "part", out)
    marker = json.loads((out / "checkpoints" / "step-000004" / ckpt.COMPLETE).read_text())
    assert marker["step"] == 4 and marker["files"]["trainer.pt"] > 0 and "dcp/.metadata" in marker["files"]
    expected = corrupt(out / "checkpoints" / "step-000004")

    caplog.set_level(logging.WARNING, logger="rayalign.train")
    assert ckpt.latest_checkpoint(out) == str(out / "checkpoints" / "step-000002")
    warning = next(r.getMessage() for r in caplog.records if "is torn" in r.getMessage())
    assert "step-000004" in warning and expected in warning, warning

    result = launch(TrainConfig.model_validate(base_config(out, chat_packed, **COMMON)))
    assert result.metrics["steps"] == 5
    full, resumed = losses(runs / "full"), losses(out)
    assert sorted(resumed) == [1, 2, 3, 4, 5]
    assert [resumed[s] for s in (3, 4, 5)] == pytest.approx([full[s] for s in (3, 4, 5)], abs=1e-6)
    assert ckpt.checkpoint_problem(str(out / "checkpoints" / "step-000004")) is None  # redone whole


def test_whole_checkpoint_has_no_problem(runs):
    for step in ("step-000002", "step-000004"):
        assert ckpt.checkpoint_problem(str(runs / "part" / "checkpoints" / step)) is None

"""`report_to`: a tiny run logged to MLflow (local file store), W&B (offline) and TensorBoard, read back
equal to metrics.jsonl; secrets never reach a tracker's config."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from train_helpers import base_config

from rayalign.train.config import TrainConfig
from rayalign.train.launcher import launch
from rayalign.train.metrics import read_metrics
from rayalign.train.tracking import redact


def _wandb_history(run_file: Path) -> dict[int, dict[str, float]]:
    """Parse an offline `.wandb` file: a LevelDB-style log (32 KiB blocks; records with a 7-byte
    header: crc32, length, type FULL/FIRST/MIDDLE/LAST) of protobuf `Record`s, after a 7-byte file header."""
    import json

    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    pos, block, chunks, out = 7, 32768, b"", {}
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too small for a header: skip to the next block
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: one complete record
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(chunks)
            chunks = b""
            if rec.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
                out[int(items["_step"])] = items
    return out


@pytest.mark.timeout(300)
def test_run_logged_to_mlflow_wandb_tensorboard_reads_back_equal(tmp_path, chat_packed, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # MLflow's local store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    cfg = base_config(
        tmp_path / "run",
        chat_packed,
        max_steps=3,
        name="tracked",
        report_to=["mlflow", "wandb", "tensorboard"],
        checkpoint={"export": False},
    )
    launch(TrainConfig.model_validate(cfg))
    want = {r["step"]: r for r in read_metrics(tmp_path / "run")}
    assert sorted(want) == [1, 2, 3]

    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("rayalign").experiment_id])
    assert [r.info.run_name for r in runs] == ["tracked"]
    run = runs[0]
    assert run.data.params["optim.lr"] == "0.001" and run.data.params["model"] == "tiny-random:llama"
    for key in ("loss", "grad_norm", "lr"):
        got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert got == {s: pytest.approx(r[key], rel=1e-12) for s, r in want.items()}, key

    files = list((tmp_path / "wb").rglob("run-*.wandb"))
    assert len(files) == 1
    history = _wandb_history(files[0])
    assert sorted(history) == [1, 2, 3]
    for s, r in want.items():
        assert history[s]["loss"] == pytest.approx(r["loss"], rel=1e-12)
        assert history[s]["grad_norm"] == pytest.approx(r["grad_norm"], rel=1e-12)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    got = {e.step: e.value for e in events.Scalars("train/loss")}
    assert got == {s: pytest.approx(r["loss"], rel=1e-6) for s, r in want.items()}  # stored as float32


def test_secrets_are_redacted_from_tracked_config():
    cfg = {
        "model": "m",
        "hf_token": "hf_abc",
        "engine": {"api_key": "sk-1", "n": 2},
        "hooks": [{"AWS_SECRET_ACCESS_KEY": "x"}],
    }
    assert redact(cfg) == {
        "model": "m",
        "hf_token": "<redacted>",
        "engine": {"api_key": "<redacted>", "n": 2},
        "hooks": [{"AWS_SECRET_ACCESS_KEY": "<redacted>"}],
    }

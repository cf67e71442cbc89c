"""`rayalign status RUN_DIR`: a run's state from its folder, after a real failed run and on S3."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta

from test_runner import failing_pipeline

from rayalign import storage
from rayalign.cli import main as cli
from rayalign.pipeline import main as run_main
from rayalign.pipeline import records
from rayalign.pipeline.status import format_status, run_status


def test_status_after_a_failed_run_lists_every_stage_and_the_resume_command(tmp_path, capsys):
    p = failing_pipeline(tmp_path)
    assert run_main([str(p), "stages.chat.config.max_length=200"]) == 1
    capsys.readouterr()
    run_dir = str(tmp_path / "run")
    st = run_status(run_dir)
    assert st.state == "failed"
    assert [(s.id, s.stage, s.state) for s in st.stages] == [
        ("chat", "prepare", "complete"),
        ("broken", "prepare", "failed"),
        ("never", "prepare", "pending"),  # from the pipeline YAML that run.json names
    ]
    chat = records.read_record(run_dir, "chat").result.counts.to_json()
    assert st.stages[0].counts == chat and chat["in"] > 0
    assert "missing.jsonl" in st.stages[1].error and st.last_error.startswith("broken: ")
    assert st.resume == f"rayalign run {p} stages.chat.config.max_length=200"

    assert cli(["status", run_dir]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"run {run_dir}: failed")
    assert out[1].split()[:3] == ["chat", "prepare", "complete"]
    assert f"rows {chat['in']} in / {chat['ok']} ok / {chat['out_rows']} out" in out[1]
    assert out[2].split()[:3] == ["broken", "prepare", "failed"]
    assert out[3].split() == ["never", "prepare", "pending"]
    assert out[-1] == f"resume: rayalign run {p} stages.chat.config.max_length=200"
    assert cli(["status", run_dir, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["state"] == "failed" and doc["stages"][2]["state"] == "pending"
    assert cli(["status", str(tmp_path / "nope")]) == 2


def _running_training_run(run_dir: str) -> None:
    """A run whose `sft` stage is at step 20 of 60 (a record, metrics.jsonl and a checkpoint, as
    the runner and the trainer write them), after a complete `chat` stage."""
    started = (datetime.now(UTC) - timedelta(seconds=40)).isoformat(timespec="seconds")
    records.write_record(
        run_dir,
        "chat",
        records.StageRecord.model_validate(
            {
                "name": "chat",
                "id": "chat",
                "stage": "prepare",
                "status": "complete",
                "seconds": 3.5,
                "config": {},
                "config_hash": "h",
                "result": {"stage": "prepare", "counts": {"in": 12, "ok": 10, "quarantined": 2, "out_rows": 4}},
            }
        ),
    )
    folder = storage.join(run_dir, "sft")
    records.write_record(
        run_dir,
        "sft",
        records.StageRecord.model_validate(
            {
                "name": "sft",
                "id": "sft",
                "stage": "sft",
                "status": "running",
                "started": started,
                "config": {"output_dir": folder, "max_steps": 60},
                "config_hash": "h",
            }
        ),
    )
    rows = [{"step": s, "loss": 2.0 - s / 100, "tokens_per_s": 512.0} for s in range(1, 21)]
    storage.write_text(storage.join(folder, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    for step in (10, 20):
        storage.write_text(storage.join(folder, "checkpoints", f"step-{step:06d}", "COMPLETE"), "")
    # a checkpoint being written (no COMPLETE marker) is not the last checkpoint
    storage.write_text(storage.join(folder, "checkpoints", "step-000030", "model", "x"), "")


def _check_running(run_dir: str) -> None:
    st = run_status(run_dir)
    assert st.stages[1].quiet_s is not None and st.stages[1].quiet_s < 60
    assert "nothing written" not in format_status(st)
    assert st.state == "running"
    chat, sft = st.stages
    assert (chat.id, chat.state, chat.counts["quarantined"]) == ("chat", "complete", 2)
    assert sft.state == "running" and 39 <= sft.seconds <= 60
    assert sft.progress.startswith("20/60 steps, loss 1.8, 512 tok/s")
    assert "ETA" in sft.progress
    assert sft.checkpoint == storage.join(run_dir, "sft", "checkpoints", "step-000020")
    text = format_status(st)
    assert f"last checkpoint: {sft.checkpoint}" in text
    assert "resume: rayalign run PIPELINE.yaml" in text  # no run.json: the generic command


def test_status_of_a_running_training_stage(tmp_path):
    run_dir = str(tmp_path / "run")
    _running_training_run(run_dir)
    _check_running(run_dir)
    # the same stage after its process died unrecorded: nothing written for 20 minutes
    old = time.time() - 1200
    for f in (tmp_path / "run" / "sft").rglob("*"):
        os.utime(f, (old, old))
    st = run_status(run_dir)
    assert 1199 <= st.stages[1].quiet_s <= 1300
    assert "nothing written for 20m00s: if its process is gone" in format_status(st)


def test_status_reads_a_run_dir_in_a_bucket(s3_bucket):
    run_dir = f"{s3_bucket}/runs/r1"
    _running_training_run(run_dir)
    _check_running(run_dir)

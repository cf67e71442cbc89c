"""`run_dir: s3://...`: stage records, summary.json, default outputs, references and clearing a
stage's folder all live in the bucket (a real S3 API on 127.0.0.1); nothing lands in a local
folder named `s3:`.

The stages here are eval stages, the quickest that write through the storage layer (dataset
stages in a bucket are covered by tests/cluster/test_shards_storage.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from rayalign import storage
from rayalign.pipeline import main, read_record, read_summary

REPO = Path(__file__).resolve().parents[2]


def eval_pipeline(tmp_path: Path, run_dir: str) -> Path:
    doc = {
        "run_dir": run_dir,
        "defaults": {"model": "tiny-random:llama"},
        "start_ray": False,
        "stages": [
            {
                "name": "first",
                "stage": "eval",
                "config": {"limit": 2, "params": {"max_tokens": 4}, "run_dir": "${run_dir}"},
            },
            # a result detail and a config value of the earlier stage, by reference
            {
                "name": "second",
                "stage": "eval",
                "config": {
                    "limit": "${stages.first.config.limit}",
                    "output": "${run_dir}/second-of-${stages.first.details.prompts}",
                    "params": "${stages.first.config.params}",
                },
            },
        ],
    }
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


@pytest.mark.timeout(300)
def test_run_dir_in_bucket(s3_bucket, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a URI turned into a local path would show up here as ./s3:
    run = f"{s3_bucket}/runs/a"
    p = eval_pipeline(tmp_path, run)
    assert main([str(p)]) == 0
    summary = read_summary(run)
    assert summary is not None and summary["status"] == "complete"
    first, second = summary["stages"]
    assert first["output"] == f"{run}/first" and second["output"] == f"{run}/second-of-2"
    rec = read_record(run, "second")
    assert rec is not None and rec.status == "complete" and rec.config["limit"] == 2
    assert rec.config["params"]["max_tokens"] == 4 and rec.result and rec.result.details["prompts"] == 2
    assert storage.exists(f"{run}/first/results.json") and storage.exists(f"{run}/first/report/report.md")
    assert "## Pipeline stages" not in storage.read_text(f"{run}/first/report/report.md")  # no summary yet then
    assert not os.path.exists(tmp_path / "s3:") and not any(tmp_path.glob("s3*"))

    # unchanged: skipped; a changed first stage clears its folder in the bucket and re-runs both
    capsys.readouterr()
    assert main([str(p)]) == 0
    assert capsys.readouterr().out.count("already complete") == 2
    storage.write_text(f"{run}/first/stale.txt", "from an older config")
    assert main([str(p), "stages.first.config.limit=3"]) == 0
    assert not storage.exists(f"{run}/first/stale.txt") and storage.exists(f"{run}/first/stage.json")
    again = read_summary(run)
    assert again is not None and [s["skipped"] for s in again["stages"]] == [False, False]
    rec = read_record(run, "second")
    assert rec is not None and rec.config["limit"] == 3 and rec.config["output"] == f"{run}/second-of-3"

"""The sft/pretrain stages: raw inputs are prepared into <output_dir>/prepared, then trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayalign.config import ConfigError
from rayalign.stages import run_stage

REPO = Path(__file__).resolve().parents[2]


def test_pretrain_stage_prepares_raw_corpus_then_trains(tmp_path):
    out = tmp_path / "run"
    res = run_stage(
        "pretrain",
        data={
            "model": "tiny-random:llama",
            "output_dir": str(out),
            "max_steps": 2,
            "progress": False,
            "data": {
                "inputs": [str(REPO / "rayjobs/data/corpus.jsonl")],
                "max_length": 128,
                "seq_len": 128,
                "overlength": "truncate",
            },
        },
    )
    manifest = json.loads((out / "prepared" / "manifest.json").read_text())
    assert manifest["counts"]["in"] == manifest["counts"]["ok"] + manifest["counts"]["quarantined"]
    assert res.metrics["steps"] == 2 and res.details["metrics_file"] == str(out / "metrics.jsonl")
    assert (Path(res.checkpoint) / "config.json").exists()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    assert res.metrics["final_loss"] == pytest.approx(json.loads(lines[-1])["loss"])


def test_stage_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.path"):
        run_stage("sft", data={"model": "tiny-random:llama", "output_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="micro_batch_size"):
        run_stage("sft", data={"output_dir": str(tmp_path), "micro_batch_size": 0})
    with pytest.raises(ConfigError, match="unknown objective"):
        run_stage(
            "sft",
            data={
                "model": "tiny-random:llama",
                "output_dir": str(tmp_path),
                "objective": {"name": "nope"},
                "data": {"path": str(tmp_path)},
            },
        )

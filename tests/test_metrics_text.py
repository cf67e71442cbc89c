"""Metrics that read right: counts as integers, no running sums among metrics, and warnings a user
should act on (answers cut at max_tokens) in the stage result, the run summary and the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayalign.eval.report import _stage_table
from rayalign.pipeline.render import summary_lines
from rayalign.results import StageResult, numeric_metrics
from rayalign.textfmt import number

REPO = Path(__file__).resolve().parents[1]


def test_numeric_metrics_keep_counts_whole_and_drop_running_sums():
    stats = {"status.ok": 106.0, "completion_tokens": 2048.0, "jaccard_sum": 134.287, "reward_sq": 3.0, "x": "a"}
    assert numeric_metrics(stats, counts=True) == {"status.ok": 106, "completion_tokens": 2048}
    assert all(type(v) is int for v in numeric_metrics(stats, counts=True).values())
    assert numeric_metrics({"final_loss": 2.0, "steps": 20}) == {"final_loss": 2.0, "steps": 20}
    assert type(numeric_metrics({"final_loss": 2.0})["final_loss"]) is float
    # a StageResult keeps the integers through JSON
    r = StageResult(stage="s", metrics={"status.ok": 106, "mean_jaccard": 0.7})
    assert StageResult.from_json(r.to_json()).to_json()["metrics"] == {"status.ok": 106, "mean_jaccard": 0.7}


def test_number_text():
    assert [number(v) for v in (106.0, 106, 0.123456, 1e-5, None, True)] == [
        "106",
        "106",
        "0.1235",
        "1e-05",
        "–",
        "True",
    ]


@pytest.mark.timeout(120)
def test_sample_stage_warns_about_truncated_answers(tmp_path):
    from rayalign.generate.sample import SampleConfig, run_sample

    cfg = SampleConfig(
        inputs=[str(REPO / "rayjobs" / "data" / "prompts.jsonl")],
        output=str(tmp_path / "sample"),
        model="tiny-random:llama",
        engine={"backend": "hf", "batch_size": 8, "max_model_len": 256},
        params={"max_tokens": 3, "n": 2, "temperature": 0.7, "seed": 0},
        pool={"workers": 0, "shard_rows": 8, "limit": 6},
    )
    logged: list[str] = []
    result = run_sample(cfg, log=logged.append)
    m = result.metrics
    cut, total = m["status.truncated"], sum(v for k, v in m.items() if k.startswith("status."))
    assert type(cut) is int and total == 12 and cut > 0  # a random model rarely ends within 3 tokens
    want = f"{cut}/12 samples truncated at max_tokens=3: raise params.max_tokens"
    assert result.details["warnings"] == [want]
    assert f"[sample] warning: {want}" in logged
    assert not [k for k in m if k.endswith("_sum") or k.startswith("status_counts.")]

    entry = {
        "id": "sample",
        "name": "sample",
        "stage": "sample",
        "status": "complete",
        "seconds": 4.0,
        "counts": result.counts.to_json(),
        "metrics": m,
        "result": result.to_json(),
    }
    summary = {"status": "complete", "seconds": 4.0, "run_dir": "runs/x", "stages": [entry]}
    lines = summary_lines(summary)
    assert lines[-2:] == ["warnings:", f"  ! sample: {want}"]
    table = "\n".join(_stage_table(summary))
    assert f"status.truncated {cut}," in table and f"- sample: {want}" in table
    assert ".000" not in table

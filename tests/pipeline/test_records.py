"""Stage records and summaries are typed; their files keep the JSON users and reports read."""

from __future__ import annotations

import json

from rayalign.pipeline.records import StageRecord, read_record, stage_summary, write_record
from rayalign.pipeline.spec import PipelineConfig, steps
from rayalign.results import Counts, StageResult, Status


def test_record_round_trips_and_a_torn_record_is_not_finished(tmp_path):
    run = str(tmp_path)
    result = StageResult(stage="prepare", output=f"{run}/p", counts=Counts(in_=5, ok=4, quarantined=1, out_rows=2))
    rec = StageRecord(name="p", id="p", stage="prepare", status=Status.COMPLETE, config_hash="abc", result=result)
    write_record(run, "p", rec)
    on_disk = json.loads((tmp_path / "p" / "stage.json").read_text())
    assert on_disk["status"] == "complete" and on_disk["result"]["counts"]["in"] == 5  # the key users see
    back = read_record(run, "p")
    assert back == rec and back.complete_with("abc") and not back.complete_with("abd")

    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "stage.json").write_text('{"name": "q", "status": "complete"')  # cut off mid-write
    assert read_record(run, "q") is None
    (tmp_path / "q" / "stage.json").write_text('{"name": "q", "status": "complete"}')  # no config hash
    assert read_record(run, "q") is None

    pipe = PipelineConfig.model_validate({"run_dir": run, "stages": [{"name": "p", "stage": "prepare"}]})
    entry = stage_summary(steps(pipe)[0], back, skipped=True).to_json()
    assert entry["counts"] == {"in": 5, "ok": 4, "quarantined": 1, "out_rows": 2, "by_reason": {}}
    assert entry["output"] == f"{run}/p" and entry["skipped"] and entry["status"] == "complete"

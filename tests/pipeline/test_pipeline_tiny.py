"""rayjobs/configs/pipeline-tiny.yaml end to end: all ten stages on the tiny model, then a re-run
that skips every stage. (The plumbing check of the quickstart chain; numbers are meaningless.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RAYALIGN = str(Path(sys.executable).parent / "rayalign")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_pipeline_tiny_end_to_end(tmp_path):
    run_dir = tmp_path / "tiny"
    cmd = [RAYALIGN, "run", "rayjobs/configs/pipeline-tiny.yaml", f"run_dir={run_dir}", "start_ray=false"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=380)
    assert out.returncode == 0, (out.stdout + out.stderr)[-5000:]
    s = json.loads((run_dir / "summary.json").read_text())
    names = ["rewrite", "pretrain", "pas", "sft", "sample", "clair", "reference", "prefer", "heldout", "eval"]
    assert s["status"] == "complete" and [x["name"] for x in s["stages"]] == names
    by = {x["name"]: x for x in s["stages"]}
    # every tiny prompt carries a rule-fixable constraint the random model's sample fails: 32 pairs
    assert by["clair"]["counts"]["out_rows"] == by["reference"]["counts"]["out_rows"] == 32
    for stage in ("pretrain", "sft", "prefer"):
        assert by[stage]["result"]["metrics"]["steps"] == by[stage]["metrics"]["steps"] == 3 and (run_dir / stage / "metrics.jsonl").exists()
    # the chain really chains: sft starts from pretrain's checkpoint, prefer and eval from the next
    assert by["sft"]["result"]["checkpoint"].startswith(str(run_dir / "sft"))
    rec = json.loads((run_dir / "sft" / "stage.json").read_text())
    assert rec["config"]["model"] == by["pretrain"]["checkpoint"]
    assert s["final_model"] == by["prefer"]["checkpoint"] and (Path(s["final_model"]) / "config.json").exists()
    m = by["eval"]["metrics"]
    assert 0 <= m["aligned/prompt_accuracy"] <= 1 and m["judge/win_rate"] is not None
    report = (run_dir / "eval" / "report" / "report.md").read_text()
    assert "## Training curves" in report and "### prefer" in report
    assert (run_dir / "eval" / "report" / "plots" / "margins_prefer.png").exists()

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    s2 = json.loads((run_dir / "summary.json").read_text())
    assert all(x["skipped"] for x in s2["stages"]) and s2["final_model"] == s["final_model"]

"""rayjobs/configs/pipeline-tiny.yaml end to end: all ten stages on the tiny model with its output on
a pseudo-terminal (the live display), a re-run of the last stages with its output on a pipe (plain
progress lines), then a re-run that skips every stage. (The plumbing check of the quickstart
chain; numbers are meaningless.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from terminal_helpers import plain, run_in_pty, summary_block

REPO = Path(__file__).resolve().parents[2]
RAYALIGN = str(Path(sys.executable).parent / "rayalign")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pipeline_tiny_end_to_end(tmp_path):
    run_dir = tmp_path / "tiny"
    cmd = [RAYALIGN, "run", "rayjobs/configs/pipeline-tiny.yaml", f"run_dir={run_dir}"]
    # on a terminal, with the local Ray cluster the YAML asks for: Ray's output stays in the log
    rc, term = run_in_pty(cmd, cwd=REPO, env=dict(os.environ), timeout=600)
    assert rc == 0, plain(term)[-5000:]
    check_output(term, run_dir, live=True)
    s = json.loads((run_dir / "summary.json").read_text())
    names = ["rewrite", "pretrain", "pas", "sft", "sample", "clair", "reference", "prefer", "heldout", "eval"]
    assert s["status"] == "complete" and [x["name"] for x in s["stages"]] == names
    by = {x["name"]: x for x in s["stages"]}
    # every tiny prompt carries a rule-fixable constraint the random model's sample fails; a fix of
    # a looping sample is not a pair (quarantined with its reason): in = ok + quarantined
    c = by["clair"]["counts"]
    assert c["in"] == 32 and c["ok"] + c["quarantined"] == 32 and sum(c["by_reason"].values()) == c["quarantined"]
    assert c["ok"] > 0 and c["out_rows"] == c["ok"] == by["reference"]["counts"]["out_rows"]
    for stage in ("pretrain", "sft", "prefer"):
        assert (
            by[stage]["result"]["metrics"]["steps"] == by[stage]["metrics"]["steps"] == 3
            and (run_dir / stage / "metrics.jsonl").exists()
        )
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

    # on a pipe (CI, `ray job logs`): plain lines for the stages that run again
    piped = subprocess.run(
        [*cmd, "stages.eval.config.limit=10", "start_ray=false"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert piped.returncode == 0, (piped.stdout + piped.stderr)[-4000:]
    check_output(piped.stdout, run_dir, live=False)
    assert "▶ [10/10] eval (eval): started" in piped.stdout and "✓ [10/10] eval (eval): done in" in piped.stdout

    again = subprocess.run(
        [*cmd, "stages.eval.config.limit=10", "start_ray=false"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr[-3000:]
    s2 = json.loads((run_dir / "summary.json").read_text())
    assert all(x["skipped"] for x in s2["stages"]) and s2["final_model"] == s["final_model"]


def check_output(text: str, run_dir: Path, live: bool) -> None:
    """Progress lines, a final summary of one line per stage within 100 columns, no library noise."""
    out = plain(text)
    names = ["rewrite", "pretrain", "pas", "sft", "sample", "clair", "reference", "prefer", "heldout", "eval"]
    if live:  # the stage list redrawn in place, with the running stage's progress
        assert " ▶ pretrain (pretrain)" in out and "running" in out and "\x1b[1A" in text
    summary = summary_block(text)
    assert summary[0].startswith("pipeline complete in")
    rows = [line.split()[0] for line in summary[1:11]]
    assert rows == names and all(len(line) <= 100 for line in summary[:11])
    by = dict(zip(names, summary[1:11]))
    assert re.search(r"rows 32 in / (\d+) ok / \1 out", by["clair"]), by["clair"]
    assert "loss " in by["prefer"] and "pass " in by["eval"]
    # library warnings: one line with the log's path, never the warnings themselves
    assert summary[-1].startswith("logs: ") or "warning line(s) from Ray, vLLM and other libraries" in summary[-1]
    assert str(run_dir / "logs" / "run-") in summary[-1]
    for noise in ("core_worker", "raylet", "(pid=", "Started a local Ray instance", "[train]", "[prepare]"):
        assert noise not in out, noise

"""What the progress display says: shard, row, step and request counts with rates and ETAs worked
out by hand, lines on a pipe only on change or every 30 s, and `--progress json`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from test_runner import chat_stage, write_pipeline

from rayalign import storage
from rayalign.data.prepare import PrepareConfig, run_prepare
from rayalign.pipeline.progress import read_progress
from rayalign.pipeline.render import PLAIN_QUIET_S, JsonDisplay, make_display
from rayalign.pipeline.spec import StageSpec, Step
from rayalign.textfmt import Progress
from rayalign.train.metrics import PlainProgress


def _prepared(tmp_path: Path, lines: list[str], limit: int | None = None):
    """A finished prepare of a JSONL file in byte-range shards of ~10 rows (row counts unknown up front)."""
    src = tmp_path / "c.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "prep"
    cfg = PrepareConfig(
        kind="corpus",
        inputs=[str(src)],
        output=str(out),
        model="tiny-random:llama",
        pool={"workers": 0, "shard_rows": 10, "limit": limit},
    )
    return out, run_prepare(cfg, log=lambda *_: None)


DOCS = [json.dumps({"id": f"d{i}", "text": f"document {i} " * 3}) for i in range(30)]


def test_progress_reads_the_shard_runners_markers(tmp_path):
    """The display's dataset progress comes from the markers `run_sharded` commits: 3 shards of a
    30-row file (2 rows unparseable) → 3/3 shards and 30 rows read."""
    out, result = _prepared(tmp_path, [*DOCS[:28], "{bad", "{also bad"], limit=30)
    p = read_progress(str(out), {}, time.time() - 1)
    assert p is not None and (p.done, p.total) == (3, 3)
    assert p.rows == p.rows_total == 30 == result.counts.in_


def test_jsonl_stage_counts_shards_from_the_plan_and_rows_as_they_finish(tmp_path):
    out, _ = _prepared(tmp_path, DOCS)
    markers = sorted((out / "_progress").glob("shard-*.json"))
    assert len(markers) == 3 and json.loads((out / "_plan.json").read_text()) == {"shards": 3, "rows": None}
    rows_first = json.loads(markers[0].read_text())["report"]["in"]
    for m in markers[1:]:  # as if shards 2 and 3 were still running
        m.unlink()
    p = read_progress(str(out), {}, time.time() - 5)
    # 1 of 3 shards done, r rows in 5 s; rows left estimated as r per shard x 2 shards: 2r / (r/5) = 10 s
    r = rows_first
    assert 8 <= r <= 12  # byte ranges of ~10 rows each
    assert p.line() == f"1/3 shards, {r} rows, {r / 5:.1f} rows/s, ETA 10s"
    markers[0].unlink()
    p = read_progress(str(out), {}, time.time() - 5)
    assert p.line() == "0/3 shards, 0 rows"  # the plan is known before any shard ends: no rate or ETA yet


def test_training_progress_has_step_total_loss_tokens_and_eta(tmp_path):
    t0 = time.time() - 100
    rows = [
        {"time": t0 + 0.5 * s, "total_steps": 60, "step": s, "loss": 2.0 - s / 100, "tokens_per_s": 512.0}
        for s in range(1, 21)
    ]
    storage.write_text(str(tmp_path / "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    # 19 steps in the 9.5 s between the first and last logged step: 2 steps/s, 40 left → 20 s
    p = read_progress(str(tmp_path), {}, t0)
    assert p.line() == "20/60 steps, loss 1.8, 512 tok/s, 2.0 steps/s, ETA 20s"
    # older metrics without total_steps: the config's max_steps (nested under train for prefer)
    storage.write_text(str(tmp_path / "metrics.jsonl"), json.dumps({"step": 5, "loss": 1.0}) + "\n")
    assert read_progress(str(tmp_path), {"train": {"max_steps": 50}}, time.time() - 10).line().startswith("5/50 steps")


def test_eval_progress_counts_requests(tmp_path):
    storage.write_json(str(tmp_path / "_progress.json"), {"phase": "answering (aligned)", "done": 30, "total": 120})
    p = read_progress(str(tmp_path), {}, time.time() - 10)
    assert p.line() == "answering (aligned): 30/120 requests, 3.0 requests/s, ETA 30s"


def test_plain_lines_only_on_change_or_every_30_s():
    out = io.StringIO()
    d = make_display(out, mode="plain")
    step = Step(StageSpec(name="sample", stage="sample"))
    a = Progress("shards", 1, 3, 10)
    d.tick(step, a, 12.0)
    d.tick(step, Progress("shards", 1, 3, 10, rate=0.5), 17.0)  # only the rate moved: no line
    d.tick(step, Progress("shards", 2, 3, 20), 22.0)
    lines = out.getvalue().splitlines()
    assert lines == [
        "  sample (sample): 1/3 shards, 10 rows (12s elapsed)",
        "  sample (sample): 2/3 shards, 20 rows (22s elapsed)",
    ]
    d._last = (d._last[0], time.time() - PLAIN_QUIET_S - 1)  # 31 s without a change
    d.tick(step, Progress("shards", 2, 3, 20), 53.0)
    assert out.getvalue().splitlines()[-1] == "  sample (sample): 2/3 shards, 20 rows (53s elapsed)"


def test_training_on_a_pipe_prints_every_30_s_and_at_the_end():
    out = io.StringIO()
    bar = PlainProgress(100, out=out)
    now = time.time()
    bar.update({"step": 1, "time": now, "loss": 2.0, "tokens_per_s": 300.0})  # < 30 s since start: quiet
    bar.update({"step": 61, "time": now + 30.5, "loss": 1.5, "tokens_per_s": 310.0})
    bar.update({"step": 70, "time": now + 35, "loss": 1.4, "tokens_per_s": 310.0})  # quiet again
    bar.update({"step": 100, "time": now + 50, "loss": 1.25, "tokens_per_s": 320.0})  # the last step
    # 60 steps in 30.5 s = 1.97 steps/s, 39 left → 20 s
    assert out.getvalue().splitlines() == [
        "train: 61/100 steps, loss 1.5, 310 tok/s, 2.0 steps/s, ETA 20s",
        "train: 100/100 steps, loss 1.25, 320 tok/s, 2.0 steps/s, ETA 0s",
    ]


def test_progress_json_writes_one_object_per_event(tmp_path):
    """`rayalign run --progress json` on a pipe: every stdout line is a JSON object (the stages' own
    output goes to the run's log file)."""
    p = write_pipeline(tmp_path, [chat_stage()])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "rayalign.cli", "run", str(p), "--progress", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]  # polled every 5 s: none on a fast run
    assert all(e["stage"] == "chat" and e.get("unit") in ("shards", None) for e in progress)
    events = [e for e in events if e["event"] != "progress"]
    assert [e["event"] for e in events] == ["start", "stage_started", "stage_done", "summary", "logs"]
    done = events[2]
    assert done["stage"] == "chat" and done["status"] == "complete" and done["counts"]["in"] > 0
    assert events[3]["status"] == "complete" and events[3]["warnings"] == []
    assert events[4]["path"].startswith(str(tmp_path / "run" / "logs" / "run-"))
    out = io.StringIO()
    d = JsonDisplay(out)
    d.tick(Step(StageSpec(name="sft", stage="sft")), Progress("steps", 20, 60, rate=2.0, loss=1.8, eta_s=20.0), 9.5)
    doc = json.loads(out.getvalue())
    assert doc["event"] == "progress" and doc["stage"] == "sft"
    assert (doc["done"], doc["total"], doc["loss"], doc["eta_s"], doc["elapsed_s"]) == (20, 60, 1.8, 20.0, 9.5)

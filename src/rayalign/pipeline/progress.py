"""Read a running stage's progress from what it writes into its folder (local or object storage).

- dataset stages: one marker per finished shard (`_progress/shard-N.json`) with the shard's `in` /
  `ok` / `out_rows`; totals from `_plan.json` (`{"shards": N, "rows": M or null}`; JSONL byte-range
  shards know their rows only once read).
- training stages: `metrics.jsonl` (one JSON object per logged step: step, total_steps, loss,
  tokens_per_s, time); the total is the rows' `total_steps`, else the stage config's `max_steps`.
- eval: `_progress.json` (`{"phase": ..., "done": n, "total": m}`).

Nothing here talks to the stage: the display polls these files, so a stage in a Ray job on another
node is followed the same way as one in this process.
"""

from __future__ import annotations

import json
import time
from typing import Any

from rayalign import storage
from rayalign.textfmt import Progress, fmt_seconds

__all__ = ["Progress", "baseline", "fmt_seconds", "read_progress", "shard_reports"]


def _jsonl(path: str) -> list[dict]:
    try:
        text = storage.read_text(path)
    except (FileNotFoundError, OSError):
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written, or torn by a kill
    return [r for r in rows if isinstance(r, dict)]


def shard_reports(folder: str) -> list[dict]:
    """The shard reports of a dataset stage's committed markers (`{"config_hash", "report"}`)."""
    markers = [storage.read_json(p) for p in storage.glob(storage.join(folder, "_progress"), "*.json")]
    reports = [m.get("report") for m in markers if isinstance(m, dict)]
    return [r for r in reports if isinstance(r, dict)]


def read_progress(folder: str, config: dict[str, Any], since: float, start_done: int = 0) -> Progress | None:
    """The progress of the stage writing `folder`, or None when it has written nothing readable yet.

    `since` is when this invocation started and `start_done` what was done then (a resumed stage's
    earlier work does not count into its rate). ETAs: dataset stages from rows/s once a shard of
    this invocation has finished (JSONL plans know only their shards: the rows left are estimated
    from the rows per finished shard); training from the steps/s between its logged steps; eval
    from requests/s.
    """
    now = time.time()
    elapsed = max(now - since, 1e-6)
    reports = shard_reports(folder)
    plan = storage.read_json(storage.join(folder, "_plan.json"))
    if reports or isinstance(plan, dict):
        plan = plan if isinstance(plan, dict) else {}
        rows = sum(int(r.get("in", 0)) for r in reports)
        total, rows_total = plan.get("shards"), plan.get("rows")
        ran = max(rows - start_done, 0)
        rate = ran / elapsed if ran else None
        eta = None
        if rate and rows_total:
            eta = max(rows_total - rows, 0) / rate
        elif rate and total and reports:
            eta = max(rows / len(reports) * total - rows, 0) / rate
        return Progress("shards", len(reports), total, rows, rows_total, rate=rate, eta_s=eta)
    steps = [r for r in _jsonl(storage.join(folder, "metrics.jsonl")) if "step" in r]
    if steps:
        last = steps[-1]
        done = int(last["step"])
        total = last.get("total_steps") or config.get("max_steps") or (config.get("train") or {}).get("max_steps")
        rate = _step_rate([r for r in steps if int(r["step"]) > start_done], done - start_done, elapsed)
        eta = max(int(total) - done, 0) / rate if rate and total else None
        return Progress(
            "steps",
            done,
            int(total) if total else None,
            rate=rate,
            loss=last.get("loss"),
            tokens_per_s=last.get("tokens_per_s"),
            eta_s=eta,
        )
    ev = storage.read_json(storage.join(folder, "_progress.json"))
    if isinstance(ev, dict):
        done, total = int(ev.get("done", 0)), ev.get("total")
        rate = max(done - start_done, 0) / elapsed or None
        eta = max(int(total) - done, 0) / rate if rate and total else None
        return Progress("requests", done, total, rate=rate, phase=str(ev.get("phase", "")), eta_s=eta)
    return None


def _step_rate(rows: list[dict], steps: int, elapsed: float) -> float | None:
    """Steps/s between the first and last step logged by this invocation (model loading and the
    first step's compile do not count), else over the invocation."""
    timed = [r for r in rows if isinstance(r.get("time"), (int, float))]
    if len(timed) >= 2 and timed[-1]["time"] > timed[0]["time"]:
        return (int(timed[-1]["step"]) - int(timed[0]["step"])) / (timed[-1]["time"] - timed[0]["time"])
    return steps / elapsed if steps > 0 else None


def baseline(folder: str) -> int:
    """What a stage had already done before this invocation (rows of shards, or steps)."""
    reports = shard_reports(folder)
    if reports:
        return sum(int(r.get("in", 0)) for r in reports)
    steps = [r for r in _jsonl(storage.join(folder, "metrics.jsonl")) if "step" in r]
    return int(steps[-1]["step"]) if steps else 0

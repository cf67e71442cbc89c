"""Read a running stage's progress from what it writes into its folder (local or object storage).

- dataset stages: one marker per finished shard (`_progress/shard-N.json`) with the shard's `in` /
  `ok` / `out_rows`; totals from `_plan.json` (`{"shards": N, "rows": M or null}`; JSONL byte-range
  shards know their rows only once read).
- training stages: `metrics.jsonl` (one JSON object per logged step: step, loss, tokens_per_s);
  the total is the stage config's `max_steps`.
- eval: `_progress.json` (`{"phase": ..., "done": n, "total": m}`).

Nothing here talks to the stage: the display polls these files, so a stage in a Ray job on another
node is followed the same way as one in this process.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from rayalign import storage


@dataclass
class Progress:
    """A stage's progress as the display shows it; `None` fields are unknown."""

    unit: str = ""  # "shards", "steps" or "requests"
    done: int = 0
    total: int | None = None
    rows: int | None = None
    rows_total: int | None = None
    rate: float | None = None  # rows/s, steps/s or requests/s over this invocation
    loss: float | None = None
    tokens_per_s: float | None = None
    phase: str = ""

    @property
    def eta_s(self) -> float | None:
        if self.rate is None or self.rate <= 0:
            return None
        if self.rows is not None and self.rows_total:
            return max(self.rows_total - self.rows, 0) / self.rate
        if self.total:
            return max(self.total - self.done, 0) / self.rate
        return None

    def line(self) -> str:
        """One short line, e.g. `3/29 shards, 24/227 rows, 12.0 rows/s, ETA 17s`."""
        parts = [f"{self.phase}: " if self.phase else ""]
        parts.append(f"{self.done}/{self.total} {self.unit}" if self.total else f"{self.done} {self.unit}")
        if self.rows is not None:
            parts.append(f", {self.rows}/{self.rows_total} rows" if self.rows_total else f", {self.rows} rows")
        if self.loss is not None:
            parts.append(f", loss {self.loss:.4g}")
        if self.tokens_per_s is not None:
            parts.append(f", {self.tokens_per_s:.0f} tok/s")
        if self.rate:
            unit = "rows" if self.rows is not None else self.unit
            rate = f"{self.rate:.1f} {unit}/s" if self.rate >= 1 else f"{1 / self.rate:.1f} s/{unit.rstrip('s')}"
            parts.append(f", {rate}")
        if self.eta_s is not None:
            parts.append(f", ETA {fmt_seconds(self.eta_s)}")
        return "".join(parts)


def fmt_seconds(s: float) -> str:
    s = round(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


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
    earlier work does not count into its rate).
    """
    elapsed = max(time.time() - since, 1e-6)
    reports = shard_reports(folder)
    if reports:
        plan = storage.read_json(storage.join(folder, "_plan.json"), {}) or {}
        rows = sum(int(r.get("in", 0)) for r in reports)
        return Progress(
            "shards", len(reports), plan.get("shards"), rows, plan.get("rows"), rate=max(rows - start_done, 0) / elapsed
        )
    steps = [r for r in _jsonl(storage.join(folder, "metrics.jsonl")) if "step" in r]
    if steps:
        last = steps[-1]
        done = int(last["step"])
        return Progress(
            "steps",
            done,
            config.get("max_steps") or (config.get("train") or {}).get("max_steps"),  # prefer nests it
            rate=max(done - start_done, 0) / elapsed,
            loss=last.get("loss"),
            tokens_per_s=last.get("tokens_per_s"),
        )
    ev = storage.read_json(storage.join(folder, "_progress.json"))
    if isinstance(ev, dict):
        return Progress("requests", int(ev.get("done", 0)), ev.get("total"), phase=str(ev.get("phase", "")))
    return None


def baseline(folder: str) -> int:
    """What a stage had already done before this invocation (rows of shards, or steps)."""
    reports = shard_reports(folder)
    if reports:
        return sum(int(r.get("in", 0)) for r in reports)
    steps = [r for r in _jsonl(storage.join(folder, "metrics.jsonl")) if "step" in r]
    return int(steps[-1]["step"]) if steps else 0

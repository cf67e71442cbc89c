"""Shared tail of every benchmark: print the markdown report and save it under benchmarks/results/.

Quick runs get a `-quick` suffix so they never overwrite the full run's dated report.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def save_report(lines: list[str], name: str, quick: bool = False) -> Path:
    report = "\n".join(lines) + "\n"
    print(report)
    out = RESULTS / f"{dt.date.today()}-{name}-cpu{'-quick' if quick else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"wrote {out}")
    return out

"""Numbers and progress lines as people read them (a low module: stages, training, eval and the
pipeline display all print through it).

A count that went through a float (JSON, `dict[str, float]` metrics) prints as `106`, not
`106.000`; a rate or a mean prints with four significant digits. A progress line reads
`3/29 shards, 240 rows, 12.0 rows/s, ETA 17s` or `20/60 steps, loss 1.8, 512 tok/s, ETA 1m24s`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


def number(v: Any) -> str:
    """`106.0` → `106`, `0.123456` → `0.1235`, None → `–`; anything else as `str`."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.4g}"
    return str(v)


def fmt_seconds(s: float) -> str:
    s = round(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


@dataclass
class Progress:
    """A stage's progress as a display shows it; `None` fields are unknown.

    `rate` is per second over this invocation: rows/s when `rows` is known, else `unit`/s.
    `eta_s` is set by whoever knows how much is left (None: not estimable yet).
    """

    unit: str = ""  # "shards", "steps" or "requests"
    done: int = 0
    total: int | None = None
    rows: int | None = None
    rows_total: int | None = None
    rate: float | None = None
    loss: float | None = None
    tokens_per_s: float | None = None
    phase: str = ""
    eta_s: float | None = None

    def key(self) -> tuple:
        """What counts as a change worth a new line on a pipe (not the rate or ETA, which drift)."""
        return (self.unit, self.done, self.total, self.rows, self.phase)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for k in ("rate", "loss", "tokens_per_s", "eta_s"):
            if data[k] is not None:
                data[k] = round(float(data[k]), 4)
        return data

    def line(self) -> str:
        """One short line, e.g. `3/29 shards, 240/2900 rows, 12.0 rows/s, ETA 3m40s`."""
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

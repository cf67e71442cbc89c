"""Numbers as people read them in tables and summaries: counts as integers, the rest to 4 digits.

A count that went through a float (JSON, `dict[str, float]` metrics) prints as `106`, not
`106.000`; a rate or a mean prints with four significant digits.
"""

from __future__ import annotations

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

"""Contrastiveness of a (rejected → chosen) pair: token Jaccard and normalised edit distance.

CLAIR's point is that a minimal revision differs from the original only where it must, so pairs
should be close (high Jaccard, small edit distance) yet not identical. Tokens here are words and
punctuation marks (lower-cased), so the numbers do not depend on any model's tokenizer.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def token_jaccard(a: str, b: str) -> float:
    """|A ∩ B| / |A ∪ B| over the token sets; two empty texts are identical (1.0)."""
    sa, sb = set(words(a)), set(words(b))
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


def edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance between token lists (insert, delete, substitute all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def normalised_edit_distance(a: str, b: str) -> float:
    """Token edit distance / the longer length: 0 identical, 1 nothing in common."""
    ta, tb = words(a), words(b)
    longest = max(len(ta), len(tb))
    return edit_distance(ta, tb) / longest if longest else 0.0


def contrast_stats(rejected: str, chosen: str) -> dict[str, float]:
    return {"jaccard": token_jaccard(rejected, chosen), "edit_distance": normalised_edit_distance(rejected, chosen)}

"""Contrastiveness of a (rejected → chosen) pair, and format-contrast pairs.

Token Jaccard and normalised edit distance measure how close a pair is.

CLAIR's point is that a minimal revision differs from the original only where it must, so pairs
should be close (high Jaccard, small edit distance) yet not identical. Tokens here are words and
punctuation marks (lower-cased), so the numbers do not depend on any model's tokenizer.

Format-contrast pairs answer a side effect of minimal revisions: a rule fix such as "wrap the answer
in quotation marks" differs from its original only in the format, so the whole preference lands on
that format's first token and the policy learns to add it everywhere. A contrast pair, for a prompt
that does not ask for a format, prefers the plain answer to the same answer with that format added
(quotes, the JSON a JSON prompt gets, a P.S., a title), so the format is learned as conditional on
the prompt asking for it.

Length-contrast pairs answer the same side effect for length: a `max_words` / `max_sentences` fix is
its original cut short, so the preference also says "stop early" for every prompt, and the answers to
prompts that set no limit shrink (and fail `min_words`-like requests). A length-contrast pair, for a
prompt that sets no length limit, prefers the plain answer to the same answer cut the way a length
fix cuts it (its first sentences), so brevity is learned as conditional on being asked for.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from typing import Literal

from rayalign import checks
from rayalign.generate import verify

_TOKEN = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def same_ending(a: str, b: str, n: int = 3) -> bool:
    """Whether two texts end with the same `n` words (case and punctuation aside): a revision that
    lowercases or drops commas still ends where its original did; one cut shorter or with words
    added at the end does not."""
    wa, wb = checks.WORD.findall(a.lower())[-n:], checks.WORD.findall(b.lower())[-n:]
    return bool(wa) and wa == wb


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


# Formats a prompt may ask for, each with the constraint kinds that ask for it, a detector (does the
# text show it?) and how an answer looks with it — the same fix a prompt asking for it gets.
def _shows_quotes(text: str) -> bool:
    return text.strip()[:1] in ('"', "“")


FormatName = Literal["quotes", "json", "postscript", "title"]  # the keys of UNASKED_FORMATS

UNASKED_FORMATS: dict[str, tuple[frozenset[str], Callable[[str], bool], Callable[[str], str]]] = {
    "quotes": (frozenset({"quotation"}), _shows_quotes, verify.FIXES["quotation"]),
    "json": (frozenset({"json_format"}), checks.json_format, verify.FIXES["json_format"]),
    "postscript": (frozenset({"postscript"}), checks.postscript, verify.FIXES["postscript"]),
    "title": (frozenset({"title", "sections"}), checks.title, verify.FIXES["title"]),
}


def unasked_formats(text: str, asked: set[str]) -> list[str]:
    """The formats `text` shows that no constraint kind in `asked` asks for."""
    return [name for name, (kinds, shows, _) in UNASKED_FORMATS.items() if not kinds & asked and shows(text)]


def format_contrast(answer: str, asked: set[str], key: str) -> tuple[str, str] | None:
    """(format, the answer with one format the prompt did not ask for added): the rejected side of a
    contrast pair whose chosen side is the plain `answer`. Which format is a stable function of `key`
    (a row id), over the formats the prompt does not ask for; None when there is none to add."""
    free = [name for name, (kinds, shows, _) in UNASKED_FORMATS.items() if not kinds & asked and not shows(answer)]
    if not free or not answer.strip():
        return None
    name = free[zlib.crc32(key.encode()) % len(free)]
    return name, UNASKED_FORMATS[name][2](answer)


# kinds that ask for a short answer: only their prompts make the shorter of two answers the better
BREVITY_KINDS = frozenset({"max_words", "max_sentences"})


def length_contrast(answer: str, asked: set[str], keep: float = 1 / 3, min_words: int = 5) -> str | None:
    """The rejected side of a length-contrast pair whose chosen side is the plain `answer`: the answer
    cut after its first sentences, as the `max_sentences` fix cuts — `keep` of its sentences (at least
    one, and at least `min_words` words: a bare "1." is no answer) — when that keeps at most half of
    its words. None when the prompt asks for brevity (`BREVITY_KINDS`) or no such cut exists."""
    if asked & BREVITY_KINDS:
        return None
    total = len(checks.WORD.findall(answer))
    n = checks.count_sentences(answer)
    for k in range(max(1, int(n * keep)), n):
        cut = verify.FIXES["max_sentences"](answer, max=k)
        size = len(checks.WORD.findall(cut))
        if 2 * size > total:
            return None
        if size >= min_words:
            return cut
    return None

"""Would a person accept this revision? Detectors the CLAIR stage runs on every (original, revision) pair.

A chosen answer teaches the policy what to write; a revision that passes its checks by degenerate
text (a phrase looping, bare keywords dumped at the end, the whole answer stuffed into one JSON
string) teaches exactly that. `revision_problem` compares the revision with its original and
returns (reason, detail) for the first problem the revision adds, or None:

| reason            | the revision ...                                                            |
|-------------------|-----------------------------------------------------------------------------|
| repetitive        | repeats one 4-word phrase 4+ times, or a sentence of 3+ words                |
| keyword_stuffing  | repeats a word back to back ("sleep sleep"), ends in 2+ bare keywords or      |
|                   | placeholders after its last sentence, or lets one word fill over a quarter of |
|                   | its words (3+ times, more than the original's share)                          |
| json_wrapper      | is a JSON object or array whose only text is one string holding the answer (2+ sentences or     |
|                   | 25+ words): a wrapper, not the answer's content as fields                     |

Repetition counts whoever wrote it: a chosen answer that loops teaches looping, even when the
original looped first (such a sample has no acceptable minimal revision). The other problems count
only where the revision adds them.
"""

from __future__ import annotations

import json
import re
from collections import Counter

from rayalign.checks import FENCE, PLACEHOLDER, SENTENCE_END, WORD, count_sentences, repeated_phrase

DOUBLED = re.compile(r"(?<![\w'-])([A-Za-z][\w'-]*)\s+\1(?![\w'-])", re.IGNORECASE)
COMMON = {"a", "an", "the", "and", "or", "of", "to", "in", "is", "it", "that", "for", "on", "you", "i", "be"}


def _tail_dump(text: str, keywords: set[str]) -> bool:
    """2+ words after the last sentence end, every one a keyword or a placeholder."""
    body = text.strip()
    ends = list(SENTENCE_END.finditer(body))
    tail = body[ends[-1].end() :] if ends else ""
    tokens = PLACEHOLDER.sub(" [slot] ", tail).split()
    if len(tokens) < 2:
        return False
    return all(t == "[slot]" or t.strip(".,;:!?\"'").lower() in keywords for t in tokens)


def _repeated_sentences(text: str) -> set[str]:
    """Sentences of 3+ words that occur twice or more (case and spacing ignored)."""
    parts, start = [], 0
    for m in SENTENCE_END.finditer(text):
        parts.append(text[start : m.end()])
        start = m.end()
    norm = [" ".join(WORD.findall(p)).lower() for p in parts]
    return {s for s, n in Counter(norm).items() if n >= 2 and len(s.split()) >= 3}


def _top_share(text: str) -> tuple[str, int, float]:
    w = [x.lower() for x in WORD.findall(text) if x.lower() not in COMMON]
    if not w:
        return "", 0, 0.0
    word, n = Counter(w).most_common(1)[0]
    return word, n, n / len(WORD.findall(text))


def _string_leaves(obj: object) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _string_leaves(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _string_leaves(v)]
    return []


def _json_wrapper(text: str) -> bool:
    t = text.strip()
    fenced = FENCE.match(t)
    t = fenced.group(1).strip() if fenced else t
    if not t.startswith(("{", "[")):
        return False  # a quoted answer parses as a JSON string but is a quotation, not a wrapper
    try:
        obj = json.loads(t)
    except ValueError:
        return False
    leaves = _string_leaves(obj)
    return len(leaves) == 1 and (count_sentences(leaves[0]) >= 2 or len(WORD.findall(leaves[0])) >= 25)


def keywords_of(constraints: list[dict]) -> set[str]:
    out: set[str] = set()
    for c in constraints:
        out.update(k.lower() for k in c.get("keywords") or [])
        if c.get("keyword"):
            out.add(str(c["keyword"]).lower())
    return out


def revision_problem(original: str, revision: str, constraints: list[dict]) -> tuple[str, str] | None:
    """(reason, detail) for the first problem the revision adds to its original, or None."""
    if repeated_phrase(revision):
        return "repetitive", "the revision repeats one 4-word phrase 4 or more times"
    again = _repeated_sentences(revision)
    if again:
        return "repetitive", f"the revision says {sorted(again)[0]!r} more than once"
    doubled = {m.group(1).lower() for m in DOUBLED.finditer(revision)} - {
        m.group(1).lower() for m in DOUBLED.finditer(original)
    }
    if doubled:
        return "keyword_stuffing", f"the revision repeats {sorted(doubled)[0]!r} back to back"
    if _tail_dump(revision, keywords_of(constraints)) and not _tail_dump(original, keywords_of(constraints)):
        return "keyword_stuffing", "the revision ends in bare keywords or placeholders outside a sentence"
    word, n, share = _top_share(revision)
    if n >= 3 and share > 0.25 and share > _top_share(original)[2]:
        return "keyword_stuffing", f"{word!r} is {n} of the revision's words ({share:.0%})"
    if _json_wrapper(revision) and not _json_wrapper(original):
        return "json_wrapper", "the revision wraps the whole answer in one JSON string instead of fields"
    return None

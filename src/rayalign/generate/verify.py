"""Checkable constraints for the verifier-guided reviser: `check(prompt_meta, response) -> bool`.

A prompt's meta may hold ``constraints``: the eval suite's format, a list of ``{"kind": KIND,
**params}`` dicts such as ``{"kind": "lowercase"}`` or ``{"kind": "end_with", "phrase": "Done"}``.
Checking is delegated to `rayalign.checks.check_response` (IFEval-like checks, a low module of their own),
so the reviser and the evaluation agree on what "passes" means.

`rule_fix` is the minimal, rule-based revision for the embedded default, where no model stronger
than the policy exists: it changes only what a failing constraint requires, in text a person would
accept (a keyword woven into a sentence, not appended bare; JSON fields carrying the answer, not a
wrapper), for the kinds that have an honest minimal fix (below: every trained kind but `min_words`,
which would need new content; the held-out kinds `checks.HELDOUT_KINDS` have none on purpose);
other failures are "unfixable".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from rayalign.checks import PLACEHOLDER, SENTENCE_END, WORD, check_response, count_word


def _drop_words(text: str, words: list[str]) -> str:
    for w in words:
        text = re.sub(rf"\b{re.escape(w)}\b\s?", "", text, flags=re.IGNORECASE)
    return text


def _truncate_words(text: str, n: int) -> str:
    matches = list(WORD.finditer(text))
    return text if len(matches) <= n else text[: matches[n - 1].end()] if n > 0 else ""


def _sentences(text: str) -> list[str]:
    """The text's sentences (ends at . ! ? before whitespace, and line ends), bullet and section
    markers dropped."""
    text = BULLET_MARK.sub("", SECTION_LINE.sub("", text))
    parts = []
    for line in text.splitlines():
        start = 0
        for m in SENTENCE_END.finditer(line):
            parts.append(line[start : m.end()])
            start = m.end()
        parts.append(line[start:])
    return [" ".join(p.split()) for p in parts if WORD.search(p)]


def _groups(text: str, n: int) -> list[str] | None:
    """The text cut into `n` consecutive non-empty groups: by sentences when there are enough, else by
    words; None when it has fewer than `n` words (nothing honest to restructure)."""
    units = _sentences(text)
    if len(units) < n:
        units = WORD.findall(text)
        if len(units) < n:
            return None
    size, extra = divmod(len(units), n)
    out, i = [], 0
    for k in range(n):
        take = size + (1 if k < extra else 0)
        out.append(" ".join(units[i : i + take]))
        i += take
    return out


def _layout(text: str, n: int, render: Callable[[int, str], str], sep: str) -> str:
    groups = _groups(text, int(n))
    return text if groups is None else sep.join(render(k, g) for k, g in enumerate(groups, start=1))


def _truncate(text: str, n: int) -> str:
    """At most `n` words: whole sentences when the first sentence fits, else the first `n` words."""
    if len(WORD.findall(text)) <= n:
        return text
    body = text.strip()
    cut = ""
    for m in SENTENCE_END.finditer(body):
        if len(WORD.findall(body[: m.end()])) > n:
            break
        cut = body[: m.end()]
    return cut if cut else _truncate_words(text, n)


def _and(items: list[str]) -> str:
    """'a', 'a and b', 'a b and c' joined without commas (a comma ban may hold too)."""
    return items[0] if len(items) == 1 else " ".join(items[:-1]) + " and " + items[-1]


def _weave_keywords(text: str, keywords: list[str]) -> str:
    """The missing keywords in one closing sentence, not a dump of bare words."""
    missing = [k for k in keywords if count_word(text, k) == 0]
    if not missing:
        return text
    return f"{_with_stop(text)} This also touches on {_and(missing)}."


# distinct sentences carrying a keyword once each (a keyword repeated back to back is not English)
KEYWORD_SENTENCES = [
    "In short it comes down to {k}.",
    "Keep {k} in mind.",
    "That is why {k} matters.",
    "A little {k} goes a long way.",
    "Think about {k} first.",
]


def _repeat_keyword(text: str, keyword: str, min: int) -> str:
    need = max(0, int(min) - count_word(text, keyword))
    extra = [KEYWORD_SENTENCES[k % len(KEYWORD_SENTENCES)].format(k=keyword) for k in range(need)]
    return " ".join([_with_stop(text), *extra]) if extra else text


def _with_stop(text: str) -> str:
    """The text stripped, ending with sentence punctuation so that a sentence can follow."""
    t = text.rstrip()
    return t if not t or t[-1] in ".!?\"'”)]>" else t + "."


def _placeholders(text: str, min: int) -> str:
    need = max(0, int(min) - len(PLACEHOLDER.findall(text)))
    if not need:
        return text
    free = [f"[{n}]" for n in PLACEHOLDER_NAMES if f"[{n}]" not in text] or [f"[{n}]" for n in PLACEHOLDER_NAMES]
    slots = [free[k % len(free)] for k in range(need)]
    return f"{_with_stop(text)} Fill in {_and(slots)} before you send it."


def _json(text: str) -> str:
    """The answer's content as JSON fields: its first sentence as the summary, the rest as points."""
    units = _sentences(text) or [text.strip()]
    if len(units) == 1:
        return json.dumps({"answer": units[0]}, ensure_ascii=False)
    return json.dumps({"summary": units[0], "points": units[1:]}, ensure_ascii=False)


def _start(text: str, phrase: str) -> str:
    sep = " " if phrase.rstrip()[-1:] in ".:!?,;" else ": "
    return f"{phrase.rstrip()}{sep}{text.lstrip()}"


def _max_sentences(text: str, n: int) -> str:
    body = text.strip()
    ends = list(SENTENCE_END.finditer(body))
    return body[: ends[n - 1].end()] if n > 0 and len(ends) >= n else text


STOPWORDS = {"a", "an", "the", "and", "or", "of", "for", "to", "in", "on", "at", "is", "are", "with", "by", "as"}


def _title(text: str) -> str:
    """A title from the first sentence's first words (up to six, no trailing "for"/"the"), capitalised."""
    first = (_sentences(text) or [text])[0]
    head = WORD.findall(first)[:6]
    while head and head[-1].lower() in STOPWORDS:
        head.pop()
    title = " ".join(w[:1].upper() + w[1:] for w in head) or "Answer"
    return f"<<{title}>>\n{text.lstrip()}"


PLACEHOLDER_NAMES = ["name", "place", "date", "time", "address", "number"]
BULLET_MARK = re.compile(r"^\s*[-*•]\s+", re.MULTILINE)
SECTION_LINE = re.compile(r"^\s*(?:#+\s*)?Section\s+\d+\s*$", re.MULTILINE | re.IGNORECASE)

# kind -> fix(response, **params) -> str; each changes what its check looks at and writes it as a
# person would: a missing keyword woven into a closing sentence (never bare words), a phrase
# prefixed with a colon, placeholders in a sentence, JSON that carries the answer's sentences as
# fields (never a {"response": ...} wrapper), a title from the answer's first words, case, removal,
# truncation at a sentence end where one fits, or (layout kinds) the same sentences regrouped into the
# asked number of bullets / sections / paragraphs. `min_words` has no honest minimal fix.
FIXES: dict[str, Callable[..., str]] = {
    "lowercase": lambda r: r.lower(),
    "uppercase": lambda r: r.upper(),
    "no_commas": lambda r: r.replace(",", ""),
    "end_with": lambda r, phrase: f"{_with_stop(r)} {phrase}",
    "start_with": _start,
    "include_keywords": _weave_keywords,
    "forbidden_words": lambda r, words: _drop_words(r, words),
    "max_words": lambda r, max: _truncate(r, int(max)),
    "quotation": lambda r: f'"{r.strip()}"',
    "keyword_frequency": _repeat_keyword,
    "json_format": _json,
    "max_sentences": lambda r, max: _max_sentences(r, int(max)),
    "bullet_count": lambda r, count: _layout(r, count, lambda k, g: f"- {g}", "\n"),
    "sections": lambda r, count, marker="Section": _layout(r, count, lambda k, g: f"{marker} {k}\n{g}", "\n\n"),
    "paragraphs": lambda r, count: _layout(r, count, lambda k, g: g, "\n\n"),
    "title": _title,
    "placeholders": _placeholders,
    "postscript": lambda r, marker="P.S.": f"{r.rstrip()}\n\n{marker} Thank you for reading.",
}


def constraints_of(prompt_meta: dict | str | None) -> list[dict]:
    if isinstance(prompt_meta, str):
        try:
            prompt_meta = json.loads(prompt_meta or "{}")
        except json.JSONDecodeError:
            return []
    cons = (prompt_meta or {}).get("constraints") if isinstance(prompt_meta, dict) else None
    return [c for c in (cons or []) if isinstance(c, dict) and "kind" in c]


def check(prompt_meta: dict | str | None, response: str) -> bool:
    """True when the response satisfies every constraint in the prompt's meta (none → True)."""
    return all(check_response(constraints_of(prompt_meta), response))


def checkable(prompt_meta: dict | str | None) -> bool:
    return bool(constraints_of(prompt_meta))


def _appended_words(cons: list[dict], text: str) -> int:
    """Words the fixes of the failing constraints would add to `text` (a word budget must leave room)."""
    n = len(WORD.findall(text))
    extra = 0
    for c in cons:
        fix = FIXES.get(c["kind"])
        if fix is not None and c["kind"] not in SHRINKING and not check_response([c], text)[0]:
            extra += max(0, len(WORD.findall(fix(text, **_params(c)))) - n)
    return extra


def _params(c: dict) -> dict:
    return {k: v for k, v in c.items() if k != "kind"}


# fixes that cut text run first in each pass, with their budget reduced by what the other fixes add
# ("include 'waves' and 'salt'" + "at most 15 words": cut to 13, then append the two keywords)
SHRINKING = ("max_words", "max_sentences")


def rule_fix(prompt_meta: dict | str | None, response: str) -> str | None:
    """Apply the fix of each failing constraint; None when the result still fails.

    Fixes can undo each other (appending "Done" breaks `lowercase`), so passes repeat, at most
    once per constraint, until every check holds.
    """
    cons = constraints_of(prompt_meta)
    order = sorted(cons, key=lambda c: c["kind"] not in SHRINKING)
    text = response
    for _ in range(len(cons)):
        if all(check_response(cons, text)):
            return text
        for c in order:
            fix = FIXES.get(c["kind"])
            if fix is None or check_response([c], text)[0]:
                continue
            params = _params(c)
            if c["kind"] == "max_words":
                params["max"] = max(1, int(params["max"]) - _appended_words(cons, text))
            text = fix(text, **params)
    return text if all(check_response(cons, text)) else None

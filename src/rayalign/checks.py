"""Verifiable instruction constraints: each kind is a pure function (response, **params) -> bool.

A constraint is a dict `{"kind": KIND, **params}`; `check_response(constraints, response)` returns
one bool per constraint. The kinds follow the spirit of IFEval (checkable by code, no judge):

| kind               | params                 | passes when                                                   |
|--------------------|------------------------|---------------------------------------------------------------|
| lowercase          |                        | there is a letter and no uppercase letter                     |
| uppercase          |                        | there is a letter and no lowercase letter                     |
| include_keywords   | keywords: [str]        | every keyword occurs as a whole word (case-insensitive)       |
| forbidden_words    | words: [str]           | none of the words occurs as a whole word (case-insensitive)   |
| keyword_frequency  | keyword, min           | the keyword occurs as a whole word at least `min` times       |
| start_with         | phrase                 | the stripped response starts with phrase (case-insensitive)   |
| end_with           | phrase                 | the stripped response ends with phrase (case-insensitive)     |
| bullet_count       | count                  | exactly `count` lines start with "- ", "* " or "• "           |
| json_format        |                        | the response (optionally in a ```json fence) parses as JSON   |
| max_words          | max                    | at most `max` words                                           |
| min_words          | min                    | at least `min` words                                          |
| max_sentences      | max                    | at most `max` sentences (split on . ! ? followed by space/end)|
| no_commas          |                        | no "," anywhere                                               |
| sections           | count, marker="Section"| at least `count` lines start with "<marker> <number>"         |
| paragraphs         | count                  | exactly `count` non-empty blocks separated by blank lines     |
| quotation          |                        | the stripped response is wrapped in double quotes             |
| title              |                        | a title in double angle brackets, e.g. <<My Title>>           |
| placeholders       | min                    | at least `min` square-bracket placeholders like [name]        |
| postscript         | marker="P.S."          | a line starts with the marker (e.g. "P.S. ...")               |
| highlights         | min                    | at least `min` markdown-highlighted spans like *this*         |
| numbered_items     | count                  | exactly `count` lines start with "1." / "2)" style numbers    |
| ends_with_question |                        | the stripped response ends with "?"                           |
| two_responses      | separator="******"     | two different non-empty answers split by a separator line     |

`HELDOUT_KINDS` (min_words and the last four) are the kinds no bundled training data, rule fix or
reward of the project targets, so an evaluation on them measures instructions never trained on.

Words are runs of letters, digits, apostrophes and hyphens. An unknown kind or a missing parameter
raises `ValueError` naming it (a suite error, not a model failure).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable

WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’-]*")
BULLET = re.compile(r"^\s*(?:[-*•])\s+\S", re.MULTILINE)
SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
PLACEHOLDER = re.compile(r"\[[^\[\]\n]+\]")
TITLE = re.compile(r"<<[^<>\n]+>>")
HIGHLIGHT = re.compile(r"(?<![*\w])\*[^*\s](?:[^*\n]*[^*\s])?\*(?![*\w])")
NUMBERED = re.compile(r"^\s*\d+[.)]\s+\S", re.MULTILINE)
FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL | re.IGNORECASE)


def words(text: str) -> list[str]:
    return WORD.findall(text)


def count_word(text: str, word: str) -> int:
    # whole-word, case-insensitive; a multi-word phrase matches with any whitespace between its words
    parts = [re.escape(p) for p in word.split()]
    pattern = r"(?<![A-Za-z0-9])" + r"\s+".join(parts) + r"(?![A-Za-z0-9])"
    return len(re.findall(pattern, text, flags=re.IGNORECASE))


def lowercase(r: str) -> bool:
    return any(c.isalpha() for c in r) and not any(c.isupper() for c in r)


def uppercase(r: str) -> bool:
    return any(c.isalpha() for c in r) and not any(c.islower() for c in r)


def include_keywords(r: str, keywords: list[str]) -> bool:
    return all(count_word(r, k) > 0 for k in keywords)


def forbidden_words(r: str, words: list[str]) -> bool:
    return not any(count_word(r, w) > 0 for w in words)


def keyword_frequency(r: str, keyword: str, min: int) -> bool:
    return count_word(r, keyword) >= min


def start_with(r: str, phrase: str) -> bool:
    return r.strip().lower().startswith(phrase.strip().lower())


def end_with(r: str, phrase: str) -> bool:
    return r.strip().lower().endswith(phrase.strip().lower())


def bullet_count(r: str, count: int) -> bool:
    return len(BULLET.findall(r)) == count


def json_format(r: str) -> bool:
    text = r.strip()
    fenced = FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def max_words(r: str, max: int) -> bool:
    return len(words(r)) <= max


def min_words(r: str, min: int) -> bool:
    return len(words(r)) >= min


def count_sentences(r: str) -> int:
    """Sentences end at . ! ? followed by whitespace or the end; trailing text without one counts too."""
    text = r.strip()
    if not text:
        return 0
    ends = list(SENTENCE_END.finditer(text))
    tail = text[ends[-1].end() :].strip() if ends else text
    return len(ends) + (1 if words(tail) else 0)


def max_sentences(r: str, max: int) -> bool:
    return count_sentences(r) <= max


def no_commas(r: str) -> bool:
    return "," not in r and "，" not in r


def sections(r: str, count: int, marker: str = "Section") -> bool:
    pattern = rf"^\s*(?:#+\s*)?{re.escape(marker)}\s+\d+"
    return len(re.findall(pattern, r, flags=re.IGNORECASE | re.MULTILINE)) >= count


def paragraphs(r: str, count: int) -> bool:
    blocks = [b for b in re.split(r"\n\s*\n", r.strip()) if b.strip()]
    return len(blocks) == count


def quotation(r: str) -> bool:
    t = r.strip()
    return len(t) >= 2 and t[0] in '"“' and t[-1] in '"”'


def title(r: str) -> bool:
    return TITLE.search(r) is not None


def placeholders(r: str, min: int) -> bool:
    return len(PLACEHOLDER.findall(r)) >= min


def postscript(r: str, marker: str = "P.S.") -> bool:
    return re.search(rf"^\s*{re.escape(marker)}", r, flags=re.MULTILINE | re.IGNORECASE) is not None


def highlights(r: str, min: int) -> bool:
    return len(HIGHLIGHT.findall(r)) >= min


def numbered_items(r: str, count: int) -> bool:
    return len(NUMBERED.findall(r)) == count


def ends_with_question(r: str) -> bool:
    return r.strip().endswith(("?", "？"))


def two_responses(r: str, separator: str = "******") -> bool:
    parts = [p.strip() for p in re.split(rf"^\s*{re.escape(separator)}\s*$", r, flags=re.MULTILINE)]
    return len(parts) == 2 and all(parts) and parts[0] != parts[1]


def repeated_phrase(r: str, n: int = 4, times: int = 4) -> bool:
    """Degeneration, not a constraint: some run of `n` words (case-insensitive) occurs `times`+ times."""
    w = [x.lower() for x in WORD.findall(r)]
    counts = Counter(tuple(w[i : i + n]) for i in range(len(w) - n + 1))
    return bool(counts) and max(counts.values()) >= times


# kinds kept out of every training path (data, revisers, rewards): the held-out suite's "unseen kinds"
HELDOUT_KINDS = ("min_words", "highlights", "numbered_items", "ends_with_question", "two_responses")


def kind_groups(kinds: Iterable[str]) -> dict[str, list[str]]:
    """{"seen": the kinds training targets, "unseen": those in `HELDOUT_KINDS`}, each sorted: the one
    place the eval splits a suite's kinds for its seen/unseen scores and paired intervals."""
    present = set(kinds)
    return {"seen": sorted(present - set(HELDOUT_KINDS)), "unseen": sorted(present & set(HELDOUT_KINDS))}


CHECKS: dict[str, Callable[..., bool]] = {
    f.__name__: f
    for f in (
        lowercase,
        uppercase,
        include_keywords,
        forbidden_words,
        keyword_frequency,
        start_with,
        end_with,
        bullet_count,
        json_format,
        max_words,
        min_words,
        max_sentences,
        no_commas,
        sections,
        paragraphs,
        quotation,
        title,
        placeholders,
        postscript,
        highlights,
        numbered_items,
        ends_with_question,
        two_responses,
    )
}


def check_one(constraint: dict, response: str) -> bool:
    kind = constraint.get("kind")
    fn = CHECKS.get(kind)  # type: ignore[arg-type]
    if fn is None:
        raise ValueError(f"unknown constraint kind {kind!r}; known kinds: {', '.join(sorted(CHECKS))}")
    params = {k: v for k, v in constraint.items() if k != "kind"}
    try:
        return bool(fn(response, **params))
    except TypeError as e:
        raise ValueError(f"constraint {constraint!r}: wrong parameters for {kind!r} ({e})") from None


def check_response(constraints: list[dict], response: str) -> list[bool]:
    """One bool per constraint: does `response` satisfy it?"""
    return [check_one(c, response) for c in constraints]

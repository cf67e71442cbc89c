"""Checkable constraints for the verifier-guided reviser: `check(prompt_meta, response) -> bool`.

A prompt's meta may hold ``constraints``: the eval suite's format, a list of ``{"kind": KIND,
**params}`` dicts such as ``{"kind": "lowercase"}`` or ``{"kind": "end_with", "phrase": "Done"}``.
Checking is delegated to `rayalign.eval.checks.check_response` (IFEval-like checks, owned by eval),
so the reviser and the evaluation agree on what "passes" means.

`rule_fix` is the minimal, rule-based revision for the embedded default, where no model stronger
than the policy exists: it changes only what a failing constraint requires, for the kinds that
have an honest minimal fix (below); other failures are "unfixable".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from rayalign.eval.checks import WORD, check_response


def _drop_words(text: str, words: list[str]) -> str:
    for w in words:
        text = re.sub(rf"\b{re.escape(w)}\b\s?", "", text, flags=re.IGNORECASE)
    return text


def _truncate_words(text: str, n: int) -> str:
    matches = list(WORD.finditer(text))
    return text if len(matches) <= n else text[: matches[n - 1].end()] if n > 0 else ""


# kind -> fix(response, **params) -> str; each touches only what its check looks at
FIXES: dict[str, Callable[..., str]] = {
    "lowercase": lambda r: r.lower(),
    "uppercase": lambda r: r.upper(),
    "no_commas": lambda r: r.replace(",", ""),
    "end_with": lambda r, phrase: f"{r.rstrip()} {phrase}",
    "start_with": lambda r, phrase: f"{phrase} {r.lstrip()}",
    "include_keywords": lambda r, keywords: (
        r.rstrip() + "".join(f" {k}" for k in keywords if not re.search(rf"\b{re.escape(k)}\b", r, flags=re.IGNORECASE))
    ),
    "forbidden_words": lambda r, words: _drop_words(r, words),
    "max_words": lambda r, max: _truncate_words(r, int(max)),
    "quotation": lambda r: f'"{r.strip()}"',
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


def rule_fix(prompt_meta: dict | str | None, response: str) -> str | None:
    """Apply the fix of each failing constraint; None when the result still fails.

    Fixes can undo each other (appending "Done" breaks `lowercase`), so passes repeat, at most
    once per constraint, until every check holds.
    """
    cons = constraints_of(prompt_meta)
    text = response
    for _ in range(len(cons)):
        results = check_response(cons, text)
        if all(results):
            return text
        for c, ok in zip(cons, results):
            fix = FIXES.get(c["kind"])
            if not ok and fix is not None:
                text = fix(text, **{k: v for k, v in c.items() if k != "kind"})
    return text if all(check_response(cons, text)) else None

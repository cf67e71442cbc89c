"""Checkable constraints for the verifier-guided reviser: `check(prompt_meta, response) -> bool`.

A prompt's meta may hold ``constraints``: a list of ``{"type": ..., "value": ...}`` dicts, e.g.
``{"type": "lowercase"}``, ``{"type": "ends_with", "value": "Done"}``, ``{"type": "max_words",
"value": 20}``. When `rayalign.eval.checks.check_response(constraints, response) -> list[bool]`
exists (the eval stage's IFEval-like checks) it decides; otherwise the small table below does.

`rule_fix` is the minimal, rule-based revision for the embedded default, where no model stronger
than the policy exists: it changes only what a failing constraint requires.
"""

from __future__ import annotations

import json
import re
from typing import Callable


def _words(text: str) -> list[str]:
    return text.split()


# type -> (check(response, value) -> bool, fix(response, value) -> str)
RULES: dict[str, tuple[Callable[[str, object], bool], Callable[[str, object], str]]] = {
    "lowercase": (lambda r, v: r == r.lower(), lambda r, v: r.lower()),
    "uppercase": (lambda r, v: r == r.upper(), lambda r, v: r.upper()),
    "no_comma": (lambda r, v: "," not in r, lambda r, v: r.replace(",", "")),
    "ends_with": (lambda r, v: r.rstrip().endswith(str(v)), lambda r, v: f"{r.rstrip()} {v}"),
    "starts_with": (lambda r, v: r.lstrip().startswith(str(v)), lambda r, v: f"{v} {r.lstrip()}"),
    "contains": (lambda r, v: str(v).lower() in r.lower(), lambda r, v: f"{r.rstrip()} {v}"),
    "max_words": (lambda r, v: len(_words(r)) <= int(v), lambda r, v: " ".join(_words(r)[: int(v)])),
    "min_words": (lambda r, v: len(_words(r)) >= int(v), None),  # no honest minimal fix
}


def constraints_of(prompt_meta: dict | str | None) -> list[dict]:
    if isinstance(prompt_meta, str):
        try:
            prompt_meta = json.loads(prompt_meta or "{}")
        except json.JSONDecodeError:
            return []
    cons = (prompt_meta or {}).get("constraints") or []
    return [c for c in cons if isinstance(c, dict) and "type" in c]


def _external():
    try:
        from rayalign.eval.checks import check_response  # type: ignore[attr-defined]

        return check_response
    except ImportError:
        return None


def check_all(constraints: list[dict], response: str) -> list[bool]:
    ext = _external()
    if ext is not None:
        return [bool(x) for x in ext(constraints, response)]
    out = []
    for c in constraints:
        rule = RULES.get(c["type"])
        if rule is None:
            raise ValueError(f"unknown constraint type {c['type']!r}; known: {', '.join(sorted(RULES))}")
        out.append(bool(rule[0](response, c.get("value"))))
    return out


def check(prompt_meta: dict | str | None, response: str) -> bool:
    """True when the response satisfies every constraint in the prompt's meta (none → True)."""
    return all(check_all(constraints_of(prompt_meta), response))


def checkable(prompt_meta: dict | str | None) -> bool:
    return bool(constraints_of(prompt_meta))


def rule_fix(prompt_meta: dict | str | None, response: str) -> str | None:
    """Apply the fix of each failing constraint in order; None when some failure has no fix."""
    cons = constraints_of(prompt_meta)
    text = response
    for c, ok in zip(cons, check_all(cons, text)):
        if ok:
            continue
        rule = RULES.get(c["type"])
        if rule is None or rule[1] is None:
            return None
        text = rule[1](text, c.get("value"))
    text = re.sub(r"[ \t]+\n", "\n", text)
    return text if check(prompt_meta, text) else None

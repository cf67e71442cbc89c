"""Prompt templates (files under ``templates/``) and the parsers that read model replies.

Templates use ``$name`` placeholders (string.Template) so braces in documents, code and LaTeX pass
through untouched. Each template's version is a short hash of its text: stage outputs record it,
so a changed prompt is visible in the data.

Parsers never raise: they return ``(value, status)`` where status is "ok" or a stable code that
becomes the row's status (the raw reply is kept beside it).
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from importlib import resources
from string import Template

TEMPLATES = ("rewrite", "pas_hint", "pas_critique", "clair_revise", "judge", "judge_rating")


@cache
def template_text(name: str) -> str:
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; available: {', '.join(TEMPLATES)}")
    return resources.files("rayalign.generate").joinpath("templates", f"{name}.txt").read_text(encoding="utf-8")


def template_version(name: str) -> str:
    return f"{name}@{hashlib.sha256(template_text(name).encode()).hexdigest()[:8]}"


def render(name: str, **values: str) -> str:
    """Fill a template; a missing value is a programming error, so it raises."""
    return Template(template_text(name)).substitute(**values).rstrip("\n")


def user_turn(name: str, **values: str) -> list[dict]:
    return [{"role": "user", "content": render(name, **values)}]


def prompt_text(messages: list[dict]) -> str:
    """A multi-turn prompt as plain text for templates: the last user turn, prefixed by context."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n".join(f"[{m['role']}] {m['content']}" for m in messages)


# ---- parsers -------------------------------------------------------------------------------

# A preface line some models add before the actual text ("Here is the revised response:").
_PREFACE = re.compile(r"^\s*(here is|here's|sure|below is|certainly)[^\n]{0,80}:\s*\n", re.IGNORECASE)
_LABEL = re.compile(r"^\s*(rewritten document|revised response|document|response|revision)\s*:\s*", re.IGNORECASE)


def strip_preface(text: str) -> str:
    text = _PREFACE.sub("", text, count=1)
    text = _LABEL.sub("", text, count=1)
    return text.strip()


def parse_rewrite(raw: str) -> tuple[str | None, str]:
    """→ (rewritten text, status): "unchanged" for the [UNCHANGED] marker, "empty" for nothing."""
    text = strip_preface(raw or "")
    if re.fullmatch(r"\[?\s*unchanged\s*\]?\.?", text, flags=re.IGNORECASE):
        return None, "unchanged"
    if not text:
        return None, "empty"
    return text, "ok"


def parse_hint(raw: str) -> tuple[str | None, str]:
    """The text after "Hint:" (first line holding it), else a single-line reply as is."""
    text = (raw or "").strip()
    if not text:
        return None, "empty"
    m = re.search(r"hint\s*:[ \t]*(.*)", text, flags=re.IGNORECASE)
    if m:
        hint = m.group(1).strip()
        if not hint:  # a bare "Hint:" label with nothing after it on its line
            return None, "unparseable"
    else:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) != 1:  # several unlabeled lines: we cannot tell which one is the hint
            return None, "unparseable"
        hint = lines[0].strip()
    hint = hint.strip().strip('"').strip("'").strip()
    return (hint, "ok") if hint else (None, "empty")


def parse_verdict(raw: str) -> tuple[bool | None, str]:
    """→ (accepted?, status). Only an explicit ACCEPT/REJECT counts; anything else is unparseable."""
    text = (raw or "").strip()
    m = re.search(r"verdict[\s:*\-]*(accept|reject)", text, flags=re.IGNORECASE)
    if not m:
        m = re.match(r"\W*(accept|reject)\b", text, flags=re.IGNORECASE)
    if not m:
        return None, "unparseable"
    return m.group(1).lower() == "accept", "ok"


def parse_revision(raw: str) -> tuple[str | None, str]:
    text = strip_preface(raw or "")
    return (text, "ok") if text else (None, "empty")


def parse_judgement(raw: str) -> tuple[str | None, str]:
    """→ ("A" | "B" | None, status). "Better: A", "[[B]]", or a reply that is just the letter."""
    text = (raw or "").strip()
    for pat in (
        r"better\s*(?:response)?\s*[:=\-]?\s*\**\s*\(?\b([AB])\b",
        r"\[\[\s*([AB])\s*\]\]",
        r"^\W*(?:response\s+)?([AB])\W*$",
    ):
        found = set(re.findall(pat, text, flags=re.IGNORECASE | re.MULTILINE))
        found = {f.upper() for f in found}
        if len(found) == 1:
            return found.pop(), "ok"
        if len(found) > 1:
            return None, "ambiguous"
    return None, "unparseable"

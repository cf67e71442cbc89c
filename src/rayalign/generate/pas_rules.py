"""PAS rules shared by the `pas` stage and serve-time PAS: which hints are acceptable and how a
hint is appended to a conversation (Baichuan Alignment report, PAS). Pure functions, no engine."""

from __future__ import annotations

import unicodedata


def script_of(text: str) -> str | None:
    """The dominant writing system of a text (LATIN, CJK, CYRILLIC, ...), None without letters."""
    counts: dict[str, int] = {}
    for ch in text:
        if not ch.isalpha():
            continue
        name = unicodedata.name(ch, "")
        script = (
            "CJK" if name.startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL")) else (name.split(" ")[0] or "OTHER")
        )
        counts[script] = counts.get(script, 0) + 1
    return max(counts, key=lambda k: counts[k]) if counts else None


def rule_check(prompt: str, hint: str, max_words: int) -> str:
    """ "ok" or why a parsed hint is rejected before any critic sees it."""
    if len(hint.split()) > max_words:
        return "too_long"
    sp, sh = script_of(prompt), script_of(hint)
    if sp and sh and sp != sh:
        return "language_changed"
    if " ".join(hint.lower().split()) == " ".join(prompt.lower().split()):
        return "echoes_prompt"
    return "ok"


def last_user(messages: list[dict]) -> int:
    return max(i for i, m in enumerate(messages) if m["role"] == "user")


def augment(messages: list[dict], hint: str | None) -> list[dict]:
    """The messages with the hint appended to the last user turn (copies; input untouched). No hint
    or no user turn: the messages as they are."""
    if not hint or not any(m.get("role") == "user" for m in messages):
        return messages
    i = last_user(messages)
    out = [dict(m) for m in messages]
    out[i]["content"] = f"{out[i]['content']}\n\n{hint}"
    return out

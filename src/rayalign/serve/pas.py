"""PAS at serve time: a hint model writes a short complement to the user's prompt, and the served
model answers the prompt with that complement appended (Baichuan Alignment report, PAS).

The template, parser, rule checks and the way a hint is appended are the PAS stage's own
(`rayalign.generate.pas_rules` / `generate.prompts`), so serve-time hints match the ones in SFT data.
There is no critic pass at serve time (it would double the latency); a hint that fails the rule
checks is dropped and the prompt is answered as is.
"""

from __future__ import annotations

from rayalign.generate.pas_rules import augment, rule_check
from rayalign.generate.prompts import parse_hint, prompt_text, user_turn

__all__ = ["accept_hint", "augment", "hint_messages"]


def hint_messages(messages: list[dict], max_words: int) -> list[dict]:
    """Chat messages asking the hint model for a complement of the conversation's last user turn."""
    return user_turn("pas_hint", prompt=_prompt(messages), max_words=str(max_words))


def accept_hint(messages: list[dict], raw: str, max_words: int) -> str | None:
    """The parsed hint if it passes the PAS stage's rule checks, else None."""
    hint, status = parse_hint(raw)
    if hint is None or status != "ok":
        return None
    return hint if rule_check(_prompt(messages), hint, max_words) == "ok" else None


def _prompt(messages: list[dict]) -> str:
    last = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    return prompt_text(messages[: last + 1])

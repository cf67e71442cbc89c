"""PAS at serve time: a hint model writes a short complement to the user's prompt, and the served
model answers the prompt with that complement appended (Baichuan Alignment report, PAS).

The hint supplements the question (what to cover, which constraints matter); it never answers
it. The project's PAS stage owns the canonical template; until it exposes one, this module uses
the simple template below so the serving hook works on its own.
"""

from __future__ import annotations

HINT_SYSTEM = (
    "You improve prompts. Given a user's prompt, write ONE short complementary hint (at most 30 words) "
    "that tells an assistant what a great answer should cover or respect. Do not answer the prompt."
)


def hint_messages(user_text: str) -> list[dict]:
    """Chat messages asking the hint model for a complement of `user_text`."""
    try:  # the PAS stage's template, once it exists, wins over the fallback above
        from rayalign.generate.tasks import pas_hint_messages  # type: ignore[attr-defined]

        return pas_hint_messages(user_text)
    except ImportError:
        return [{"role": "system", "content": HINT_SYSTEM},
                {"role": "user", "content": f"Prompt:\n{user_text}\n\nHint:"}]


def clean_hint(text: str, max_words: int = 30) -> str:
    """First paragraph of the hint, capped at `max_words` words (a 135M model rambles)."""
    first = text.strip().split("\n\n")[0].strip()
    words = first.split()
    return " ".join(words[:max_words])


def augment(messages: list[dict], hint: str) -> list[dict]:
    """Append the hint to the last user turn; other turns are untouched (copies, not mutations)."""
    if not hint:
        return messages
    out = [dict(m) for m in messages]
    for m in reversed(out):
        if m.get("role") == "user":
            m["content"] = f"{m.get('content') or ''}\n\n{hint}"
            break
    return out


def last_user_text(messages: list[dict]) -> str | None:
    for m in reversed(messages):
        if m.get("role") == "user":
            return m.get("content") or ""
    return None

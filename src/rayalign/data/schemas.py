"""Arrow schemas of the four dataset kinds and row-by-row validation.

`validate_row(kind, raw)` returns ``(row, None)`` for a good row (normalised to the kind's schema)
or ``(None, Reason)`` for a bad one. Bad rows are never dropped: the shard runner writes them to a
quarantine dataset with their reason and raw text, and counts reconcile (in = ok + quarantined).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

Kind = Literal["corpus", "chat", "prompts", "pairs"]
KINDS: tuple[str, ...] = ("corpus", "chat", "prompts", "pairs")
ROLES = ("system", "user", "assistant")

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

SCHEMAS: dict[str, pa.Schema] = {
    "corpus": pa.schema([("id", pa.string()), ("text", pa.string()), ("meta", pa.string())]),
    "chat": pa.schema([("id", pa.string()), ("messages", MESSAGES), ("meta", pa.string())]),
    "prompts": pa.schema([("id", pa.string()), ("messages", MESSAGES), ("meta", pa.string())]),
    "pairs": pa.schema(
        [
            ("id", pa.string()),
            ("prompt", MESSAGES),
            ("chosen", pa.string()),
            ("rejected", pa.string()),
            ("meta", pa.string()),
        ]
    ),
}

INT_LIST = pa.list_(pa.int32())
# rows of a packed dataset (`corpus`, `chat` after `prepare`): ready for the training loop
PACKED_SCHEMA = pa.schema(
    [
        ("input_ids", INT_LIST),
        ("labels", INT_LIST),
        ("position_ids", INT_LIST),
        ("seq_lens", INT_LIST),
        ("doc_ids", pa.list_(pa.string())),
        ("num_tokens", pa.int64()),
        ("num_targets", pa.int64()),
    ]
)
# tokenised pairs: the `pairs` row plus the token ids of prompt, chosen and rejected
PAIR_TOKEN_SCHEMA = pa.schema(
    [*list(SCHEMAS["pairs"]), ("prompt_ids", INT_LIST), ("chosen_ids", INT_LIST), ("rejected_ids", INT_LIST)]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("index", pa.int64()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("raw", pa.string()),
    ]
)


@dataclass(frozen=True)
class Reason:
    """Why a row was quarantined: a stable `code` to count by and a human `detail`."""

    code: str
    detail: str


class RowError(Exception):
    """Raised by validation and format adapters for one row; carries its quarantine Reason."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.reason = Reason(code, detail)


def _field(raw: dict, name: str, required: bool = True) -> Any:
    if name not in raw:
        if required:
            raise RowError("missing_field", f"field {name!r} is missing")
        return None
    value = raw[name]
    if value is None and required:
        raise RowError("null_value", f"field {name!r} is null")
    return value


def _text(raw: dict, name: str) -> str:
    value = _field(raw, name)
    if not isinstance(value, str):
        raise RowError("wrong_type", f"field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RowError("empty_text", f"field {name!r} is empty")
    return value


def _content(value: Any, where: str) -> Any:
    """A message's content: a string, or OpenAI content parts made only of text (joined by newlines)."""
    if not isinstance(value, list):
        return value
    kinds = [p.get("type") if isinstance(p, dict) else type(p).__name__ for p in value]
    other = sorted({str(k) for k in kinds if k != "text"})
    if other:
        raise RowError(
            "non_text_content", f"{where} content has parts of type {', '.join(other)}; only text parts are supported"
        )
    texts = [p.get("text") for p in value]
    if not all(isinstance(t, str) for t in texts):
        raise RowError("wrong_type", f"{where} content has a text part whose 'text' is not a string")
    return "\n".join(texts)


def _messages(value: Any, name: str) -> list[dict]:
    if value is None:
        raise RowError("null_value", f"field {name!r} is null")
    if not isinstance(value, list):
        raise RowError("wrong_type", f"field {name!r} must be a list of messages, got {type(value).__name__}")
    if not value:
        raise RowError("empty_text", f"field {name!r} has no messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RowError("wrong_type", f"{name}[{i}] must be an object with role and content")
        if "role" not in m or "content" not in m:
            missing = "role" if "role" not in m else "content"
            raise RowError("missing_field", f"{name}[{i}] has no {missing!r}")
        role, content = m["role"], _content(m["content"], f"{name}[{i}]")
        if role is None or content is None:
            raise RowError("null_value", f"{name}[{i}] has a null role or content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise RowError("wrong_type", f"{name}[{i}] role and content must be strings")
        if role not in ROLES:
            raise RowError("unknown_role", f"{name}[{i}] has unknown role {role!r}; allowed: {', '.join(ROLES)}")
        if not content.strip():
            raise RowError("empty_text", f"{name}[{i}] ({role}) has empty content")
        out.append({"role": role, "content": content})
    return out


def _meta(raw: dict) -> str:
    meta = raw.get("meta")
    if meta is None:
        return "{}"
    if isinstance(meta, str):
        return meta
    try:
        return json.dumps(meta, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        raise RowError("wrong_type", "field 'meta' is not JSON-serialisable") from None


def _id(raw: dict, default_id: str) -> str:
    value = raw.get("id")
    if value is None:
        return default_id
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    raise RowError("wrong_type", f"field 'id' must be a string or integer, got {type(value).__name__}")


def _prompt_messages(raw: dict, name: str = "prompt") -> list[dict]:
    """A prompt is either `messages` (ending with a user turn) or a plain `prompt` string."""
    if "messages" in raw:
        msgs = _messages(raw["messages"], "messages")
    elif name in raw and isinstance(raw[name], list):
        msgs = _messages(raw[name], name)
    elif name in raw:
        msgs = [{"role": "user", "content": _text(raw, name)}]
    else:
        raise RowError("missing_field", f"field {name!r} (or 'messages') is missing")
    if msgs[-1]["role"] != "user":
        raise RowError("no_user_turn", "the prompt must end with a user message")
    return msgs


OPEN_FIELDS = ("chosen_open", "rejected_open")


def _open_ends(raw: dict) -> dict[str, bool]:
    """A pair's optional `chosen_open` / `rejected_open` flags, those that are true: that side is an
    answer cut off before it ended, tokenised without the end-of-turn. Absent or null: it ended."""
    out = {}
    for name in OPEN_FIELDS:
        value = _field(raw, name, required=False)
        if value is not None and not isinstance(value, bool):
            raise RowError("wrong_type", f"field {name!r} must be true or false, got {type(value).__name__}")
        if value:
            out[name] = True
    return out


def _response(raw: dict, name: str) -> str:
    value = _field(raw, name)
    if isinstance(value, list):  # a message list: take its last assistant turn
        msgs = _messages(value, name)
        turns = [m["content"] for m in msgs if m["role"] == "assistant"]
        if not turns:
            raise RowError("no_assistant_turn", f"field {name!r} holds no assistant message")
        return turns[-1]
    return _text(raw, name)


def validate_row(kind: str, raw: Any, default_id: str = "") -> tuple[dict | None, Reason | None]:
    """Validate and normalise one raw row of `kind`."""
    try:
        if not isinstance(raw, dict):
            raise RowError("not_an_object", f"row must be a JSON object, got {type(raw).__name__}")
        rid = _id(raw, default_id)
        row: dict[str, Any]
        if kind == "corpus":
            row = {"id": rid, "text": _text(raw, "text"), "meta": _meta(raw)}
        elif kind == "chat":
            msgs = _messages(_field(raw, "messages"), "messages")
            if not any(m["role"] == "assistant" for m in msgs):
                raise RowError("no_assistant_turn", "chat has no assistant turn to learn from")
            row = {"id": rid, "messages": msgs, "meta": _meta(raw)}
        elif kind == "prompts":
            row = {"id": rid, "messages": _prompt_messages(raw), "meta": _meta(raw)}
        elif kind == "pairs":
            prompt = _prompt_messages(raw)
            chosen, rejected = _response(raw, "chosen"), _response(raw, "rejected")
            if chosen.strip() == rejected.strip():
                raise RowError("chosen_equals_rejected", "chosen and rejected are identical: no preference signal")
            row = {"id": rid, "prompt": prompt, "chosen": chosen, "rejected": rejected, "meta": _meta(raw)}
            row.update(_open_ends(raw))
        else:
            raise ValueError(f"unknown dataset kind {kind!r}; allowed: {', '.join(KINDS)}")
        return row, None
    except RowError as e:
        return None, e.reason

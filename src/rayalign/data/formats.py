"""Row formats users bring, mapped to rayalign's four dataset kinds before validation.

| format     | row shape                                                        | kinds              |
|------------|------------------------------------------------------------------|--------------------|
| `native`   | `text`; `messages`; `prompt`; `prompt`/`chosen`/`rejected`       | all                |
| `trl`      | `prompt`/`completion` (strings or message lists), preference     | chat, prompts,     |
|            | `prompt`/`chosen`/`rejected` or implicit-prompt `chosen`/`rejected` | pairs           |
|            | conversations, unpaired `prompt`/`completion`/`label` (KTO)      |                    |
| `sharegpt` | `conversations: [{from, value}]` (+ `system`; `chosen`/`rejected` | chat, prompts,    |
|            | turns for preference data)                                        | pairs             |
| `alpaca`   | `instruction`/`input`/`output` (+ `system`; `chosen`/`rejected`)  | chat, prompts, pairs |
| `openai`   | `messages` with string content or text content parts;            | chat, prompts,     |
|            | preference `input.messages`/`preferred_output`/`non_preferred_output` | pairs         |

`format: auto` (the default) picks the format of each row from its keys, so mixed files work;
naming a format makes every row go through that adapter, and a row that does not fit it is
quarantined with the adapter's own reason (`sharegpt_bad_turn`, `alpaca_missing_instruction`,
`trl_unpaired_preference`, ...). OpenAI content parts made only of text are accepted by every
format (joined with newlines); other part types are `non_text_content`.

Unpaired KTO rows (`label`) are SFT examples for `chat` when `label` is true; an undesirable
completion (`label: false`) has no place in a chat dataset (`trl_undesirable_completion`), and
`pairs` needs both completions of one prompt in one row (`trl_unpaired_preference`).
"""

from __future__ import annotations

from typing import Any, Literal

from rayalign.data.readers import DataError
from rayalign.data.schemas import Reason, RowError, validate_row

Format = Literal["auto", "native", "trl", "sharegpt", "alpaca", "openai"]
FORMATS: tuple[str, ...] = ("auto", "native", "trl", "sharegpt", "alpaca", "openai")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "system": "system",
}


def detect_row(raw: Any) -> str:
    """The format a row's keys point to (`native` when nothing more specific fits)."""
    if not isinstance(raw, dict):
        return "native"
    if "conversations" in raw:
        return "sharegpt"
    if "instruction" in raw or ("input" in raw and "output" in raw):
        return "alpaca"
    if "completion" in raw or ("label" in raw and "prompt" in raw):
        return "trl"
    if "preferred_output" in raw or "non_preferred_output" in raw:
        return "openai"
    if "chosen" in raw and "prompt" not in raw and "messages" not in raw:
        return "trl"  # implicit prompt: chosen/rejected hold whole conversations
    msgs = raw.get("messages")
    if isinstance(msgs, list) and any(isinstance(m, dict) and isinstance(m.get("content"), list) for m in msgs):
        return "openai"
    return "native"


# top-level keys of which a row of each kind needs at least one, in some format
KIND_KEYS = {
    "corpus": ("text",),
    "chat": ("messages", "conversations", "instruction", "completion"),
    "prompts": ("messages", "prompt", "conversations", "instruction"),
    "pairs": ("chosen", "preferred_output", "label"),
}


def check_columns(path: str, kind: str, columns: list[str]) -> None:
    """A columnar file whose columns cannot hold a row of `kind` is a wrong input, not bad rows."""
    if not set(KIND_KEYS[kind]) & set(columns):
        raise DataError(
            f"{path}: its columns ({', '.join(columns) or 'none'}) hold no {kind} rows: a {kind} "
            f"dataset needs one of {', '.join(KIND_KEYS[kind])}; check `kind` and `inputs`, "
            "or convert the file"
        )


def _keep(raw: dict, out: dict) -> dict:
    for key in ("id", "meta"):
        if key in raw:
            out[key] = raw[key]
    return out


def _user_prefix(msgs: list) -> list:
    """A chat cut after its last user turn: the prompt a chat row holds."""
    last = max((i for i, m in enumerate(msgs) if isinstance(m, dict) and m.get("role") == "user"), default=-1)
    return msgs[: last + 1] if last >= 0 else msgs


def _as_messages(value: Any, role: str) -> Any:
    return [{"role": role, "content": value}] if isinstance(value, str) else value


def _sharegpt_turns(value: Any, name: str) -> list[dict]:
    if not isinstance(value, list):
        raise RowError("sharegpt_bad_turn", f"{name!r} must be a list of {{from, value}} turns")
    out = []
    for i, t in enumerate(value):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise RowError("sharegpt_bad_turn", f"{name}[{i}] must be an object with 'from' and 'value'")
        speaker = t["from"]
        if not isinstance(speaker, str) or speaker.lower() not in SHAREGPT_ROLES:
            raise RowError(
                "sharegpt_unknown_speaker",
                f"{name}[{i}] is from {speaker!r}; known: {', '.join(sorted(SHAREGPT_ROLES))}",
            )
        out.append({"role": SHAREGPT_ROLES[speaker.lower()], "content": t["value"]})
    return out


def _sharegpt(kind: str, raw: dict) -> dict:
    msgs = _sharegpt_turns(raw.get("conversations"), "conversations")
    if isinstance(raw.get("system"), str) and raw["system"].strip():
        msgs = [{"role": "system", "content": raw["system"]}, *msgs]
    if kind == "chat":
        return {"messages": msgs}
    if kind == "prompts":
        return {"messages": _user_prefix(msgs)}
    if kind == "pairs":
        pair = {
            k: _sharegpt_turns([raw[k]] if isinstance(raw.get(k), dict) else raw.get(k), k)
            for k in ("chosen", "rejected")
        }
        return {"messages": msgs, **{k: v[-1]["content"] for k, v in pair.items()}}
    raise RowError("format_mismatch", "ShareGPT rows are conversations; use kind chat, prompts or pairs")


def _alpaca(kind: str, raw: dict) -> dict:
    instruction, extra = raw.get("instruction"), raw.get("input")
    if not isinstance(instruction, str) or not instruction.strip():
        raise RowError("alpaca_missing_instruction", "'instruction' must be a non-empty string")
    if extra is not None and not isinstance(extra, str):
        raise RowError("alpaca_bad_input", f"'input' must be a string, got {type(extra).__name__}")
    user = instruction + (f"\n\n{extra}" if extra and extra.strip() else "")
    prompt = (
        [{"role": "system", "content": raw["system"]}]
        if isinstance(raw.get("system"), str) and raw["system"].strip()
        else []
    ) + [{"role": "user", "content": user}]
    if kind == "prompts":
        return {"messages": prompt}
    if kind == "pairs":
        return {"messages": prompt, "chosen": raw.get("chosen"), "rejected": raw.get("rejected")}
    if kind == "chat":
        if "output" not in raw:
            raise RowError("alpaca_missing_output", "'output' (the answer to learn) is missing")
        return {"messages": [*prompt, {"role": "assistant", "content": raw["output"]}]}
    raise RowError("format_mismatch", "Alpaca rows are instructions; use kind chat, prompts or pairs")


def _trl(kind: str, raw: dict) -> dict:
    if "label" in raw:
        if kind == "pairs":
            raise RowError(
                "trl_unpaired_preference",
                "an unpaired (KTO) row has one completion; pairs need "
                "'chosen' and 'rejected' for one prompt in one row",
            )
        if kind == "chat" and raw["label"] is not True:
            raise RowError(
                "trl_undesirable_completion",
                f"label is {raw['label']!r}: only desirable completions (label true) are SFT examples",
            )
    if kind == "pairs" and "prompt" not in raw:  # implicit prompt: the shared prefix of both conversations
        chosen, rejected = raw.get("chosen"), raw.get("rejected")
        if not isinstance(chosen, list) or not isinstance(rejected, list):
            raise RowError("trl_missing_prompt", "no 'prompt': 'chosen' and 'rejected' must then be conversations")
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        return {"messages": chosen[:n], "chosen": chosen[n:], "rejected": rejected[n:]}
    if kind == "pairs":
        return {"prompt": raw.get("prompt"), "chosen": raw.get("chosen"), "rejected": raw.get("rejected")}
    if "prompt" not in raw:
        raise RowError("trl_missing_prompt", "'prompt' is missing")
    prompt = _as_messages(raw["prompt"], "user")
    if kind == "prompts":
        return {"messages": prompt}
    if kind == "chat":
        if "completion" not in raw:
            raise RowError("trl_missing_completion", "'completion' is missing")
        completion = _as_messages(raw["completion"], "assistant")
        if not isinstance(prompt, list) or not isinstance(completion, list):
            raise RowError("wrong_type", "'prompt' and 'completion' must each be a string or a message list")
        return {"messages": prompt + completion}
    raise RowError("format_mismatch", "TRL prompt/completion rows are chats; use kind chat, prompts or pairs")


def _openai(kind: str, raw: dict) -> dict:
    if kind == "pairs" and "input" in raw:
        inp = raw["input"]
        if not isinstance(inp, dict) or not isinstance(inp.get("messages"), list):
            raise RowError("openai_bad_input", "'input' must be an object with a 'messages' list")
        return {
            "messages": inp["messages"],
            "chosen": raw.get("preferred_output"),
            "rejected": raw.get("non_preferred_output"),
        }
    if "messages" not in raw:
        raise RowError("openai_missing_messages", "'messages' is missing")
    if kind == "prompts" and isinstance(raw["messages"], list):
        return {"messages": _user_prefix(raw["messages"])}
    if kind in ("chat", "prompts", "pairs"):
        return {k: raw[k] for k in ("messages", "chosen", "rejected") if k in raw}
    raise RowError("format_mismatch", "OpenAI rows are chats; use kind chat, prompts or pairs")


ADAPTERS = {"sharegpt": _sharegpt, "alpaca": _alpaca, "trl": _trl, "openai": _openai}


def to_native(kind: str, raw: Any, fmt: str = "auto") -> Any:
    """The row in rayalign's native shape (raises RowError when it does not fit `fmt`)."""
    if fmt == "auto":
        fmt = detect_row(raw)
    if fmt == "native" or not isinstance(raw, dict):
        return raw
    if fmt not in ADAPTERS:
        raise ValueError(f"unknown data format {fmt!r}; allowed: {', '.join(FORMATS)}")
    return _keep(raw, ADAPTERS[fmt](kind, raw))


def normalise(kind: str, raw: Any, fmt: str = "auto", default_id: str = "") -> tuple[dict | None, Reason | None]:
    """Adapt one row from its format and validate it as `kind`: ``(row, None)`` or ``(None, reason)``."""
    try:
        native = to_native(kind, raw, fmt)
    except RowError as e:
        return None, e.reason
    return validate_row(kind, native, default_id)

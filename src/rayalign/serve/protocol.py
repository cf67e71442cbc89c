"""The OpenAI wire format: request models, response builders and OpenAI-shaped errors.

Only the fields clients rely on are modelled; unknown fields are ignored (clients send many
optional knobs) but every modelled field is validated and a bad one is reported by name in
`error.param`, so `openai.BadRequestError` tells the user exactly what to fix.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_STOP = 4  # OpenAI's own limit on stop sequences


class ApiError(Exception):
    """An error that becomes an HTTP status plus `{"error": {message, type, param, code}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict] | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, v):
        # The content-parts form is accepted as long as every part is text: this is a text model.
        if isinstance(v, list):
            texts = []
            for i, part in enumerate(v):
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError(
                        f"content part {i} must be {{'type': 'text', 'text': str}}; "
                        f"this endpoint serves a text-only model"
                    )
                texts.append(part["text"])
            return "".join(texts)
        return v


class StreamOptions(_Lenient):
    include_usage: bool = False


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict | None = None

    @model_validator(mode="after")
    def _schema(self):
        if self.type == "json_schema" and not isinstance((self.json_schema or {}).get("schema"), dict):
            raise ValueError("type json_schema needs json_schema: {name, schema: {...JSON schema...}}")
        return self


class _SamplingFields(_Lenient):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=0, lt=2**63)  # torch/vLLM seeds are 64-bit
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        if v is None:
            return []
        stops = [v] if isinstance(v, str) else list(v)
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name for max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @model_validator(mode="after")
    def _top(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def chat_messages(self) -> list[dict]:
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.content or ""} for m in self.messages
        ]

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_SamplingFields):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)

    def logprobs_k(self) -> int | None:
        return self.logprobs

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        # One prompt per request keeps usage and errors per request; batching happens server-side.
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError(f"send one prompt per request (got a list of {len(v)})")
            v = v[0]
        return v

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


def parse_body(raw: bytes, model_cls: type[BaseModel], limit: int) -> Any:
    """bytes → validated request, or ApiError 413 (too big) / 400 (bad JSON, bad field)."""
    if len(raw) > limit:
        raise ApiError(413, f"request body is {len(raw)} bytes; the limit is {limit}", code="request_too_large")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:  # e.g. a megabyte of '[': the parser's own depth limit
        raise ApiError(400, "request body is not valid JSON: nested too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        if first.get("type") == "missing":
            msg = f"missing required field '{param}'"
            code = "missing_required_parameter"
        else:
            msg = f"invalid value for '{param}': {first.get('msg')} (got {first.get('input')!r})"
            code = "invalid_value"
        if err.error_count() > 1:
            msg += f" (+{err.error_count() - 1} more problem(s))"
        raise ApiError(400, msg, param=param, code=code) from None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_logprobs(lps: list[dict] | None) -> dict | None:
    """OpenAI chat shape: {"content": [{token, logprob, bytes, top_logprobs: [...]}]}."""
    if lps is None:
        return None

    def one(tok: str, lp: float) -> dict:
        return {"token": tok, "logprob": lp, "bytes": list(tok.encode("utf-8", "replace"))}

    return {
        "content": [{**one(x["token"], x["logprob"]), "top_logprobs": [one(t, v) for t, v in x["top"]]} for x in lps]
    }


def completion_logprobs(lps: list[dict] | None, offset: int = 0) -> dict | None:
    """OpenAI completions shape: parallel lists of tokens, their log-probs, top maps, text offsets."""
    if lps is None:
        return None
    offsets, pos = [], offset
    for x in lps:
        offsets.append(pos)
        pos += len(x["token"])
    return {
        "tokens": [x["token"] for x in lps],
        "token_logprobs": [x["logprob"] for x in lps],
        "top_logprobs": [dict(x["top"]) for x in lps],
        "text_offset": offsets,
    }


def chat_response(rid: str, model: str, out: dict) -> dict:
    lps = out.get("logprobs") or [None] * len(out["texts"])
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": t},
                "finish_reason": f,
                "logprobs": chat_logprobs(lp),
            }
            for i, (t, f, lp) in enumerate(zip(out["texts"], out["finish_reasons"], lps))
        ],
        "usage": usage(out["prompt_tokens"], sum(out["completion_tokens"])),
    }


def completion_response(rid: str, model: str, out: dict) -> dict:
    lps = out.get("logprobs") or [None] * len(out["texts"])
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "text": t, "finish_reason": f, "logprobs": completion_logprobs(lp)}
            for i, (t, f, lp) in enumerate(zip(out["texts"], out["finish_reasons"], lps))
        ],
        "usage": usage(out["prompt_tokens"], sum(out["completion_tokens"])),
    }


def chat_chunk(
    rid: str, model: str, created: int, index: int, delta: dict, finish: str | None, logprobs: list[dict] | None = None
) -> dict:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": chat_logprobs(logprobs)}],
    }


def completion_chunk(
    rid: str, model: str, created: int, index: int, text: str, finish: str | None, logprobs: list[dict] | None = None
) -> dict:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": index, "text": text, "finish_reason": finish, "logprobs": completion_logprobs(logprobs)}],
    }


def sse(obj: dict | str) -> bytes:
    """One server-sent event; the stream ends with the literal `[DONE]` as OpenAI's does."""
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n".encode()

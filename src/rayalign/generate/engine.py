"""The one Engine protocol every generation stage and the serving layer use.

An engine turns requests (chat messages or a raw prompt, plus sampling params) into results (texts,
token counts, finish reasons) and never raises for a single bad row: a failed request comes back
with `error` set. Backends (vllm, hf) implement `generate`; stages never care which they got.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from rayalign.config import Cfg


class SamplingParams(Cfg):
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: list[str] = []
    n: int = 1
    seed: int | None = None


@dataclass
class GenRequest:
    messages: list[dict] | None = None  # chat messages (the chat template is applied by the engine)
    prompt: str | None = None  # or a raw prompt string, used as is
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = ""


@dataclass
class GenResult:
    texts: list[str]  # n completions
    prompt_tokens: int = 0
    completion_tokens: list[int] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)  # "stop" | "length" | "error"
    error: str | None = None  # set instead of raising, per row

    @property
    def ok(self) -> bool:
        return self.error is None


@runtime_checkable
class Engine(Protocol):
    model_name: str

    def generate(self, requests: list[GenRequest]) -> list[GenResult]: ...

    def count_tokens(self, messages: list[dict] | None = None, prompt: str | None = None) -> int: ...

    def max_context(self) -> int: ...

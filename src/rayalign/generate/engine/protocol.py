"""The Engine protocol every generation stage and the serving layer use, and what flows through it.

An engine turns requests (chat messages or a raw prompt, plus sampling params) into results (texts,
token counts, finish reasons, optional log-probs) and never raises for a single bad row: a failed
request comes back with `error` set. `stream` yields typed `StreamChunk`s — text deltas, then one
final chunk per choice with its finish reason and exact token counts — so a caller never digs usage
out of a generator's return value. `close` frees the engine (for vLLM its engine-core process).

Async engines (`AsyncEngine`, vLLM's continuously batched engine) add `agenerate` / `astream`
coroutines: any number of callers share one running batch, and cancelling an `astream` consumer
aborts its request inside the engine.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import Field

from rayalign.config import Cfg, DType


class SamplingParams(Cfg):
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0  # nucleus sampling mass
    max_tokens: int = 256  # most new tokens per answer; a longer one is cut (finish_reason length)
    stop: list[str] = Field(default_factory=list)  # strings that end an answer (not included)
    n: int = 1  # answers per prompt
    seed: int | None = None  # per-request seed: equal seeds give equal samples (None: the engine's)


@dataclass
class TokenLogprob:
    """One generated token: its text, log-prob under the model's log-softmax, and the top-k."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)
    token_id: int = -1


@dataclass
class GenRequest:
    messages: list[dict] | None = None  # chat messages (the chat template is applied by the engine)
    prompt: str | None = None  # or a raw prompt string, used as is
    prompt_ids: list[int] | None = None  # or the prompt's token ids, used as they are (multi-turn rollouts)
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = ""
    # Serving-only knobs, kept off SamplingParams so stage config hashes do not move.
    adapter: str | None = None  # a named adapter loaded by the engine (None: the base model)
    logprobs: int | None = None  # None: none; k >= 0: the sampled token's log-prob and the top k
    response_format: dict[str, Any] | None = None  # {"type": "json_object"} | {"type": "json_schema", ...}


@dataclass
class GenResult:
    texts: list[str]  # n completions
    prompt_tokens: int = 0
    completion_tokens: list[int] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)  # "stop" | "length" | "error"
    error: str | None = None  # set instead of raising, per row
    logprobs: list[list[TokenLogprob]] | None = None  # per completion, when requested

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class StreamChunk:
    """One item of a stream: a text delta of choice `index`, or (when `finish_reason` is set) the
    end of that choice with its exact completion token count."""

    index: int = 0
    delta: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of the tokens behind `delta`


@runtime_checkable
class Engine(Protocol):
    model_name: str

    def generate(self, requests: list[GenRequest]) -> list[GenResult]: ...

    def stream(self, request: GenRequest) -> Iterator[StreamChunk]: ...

    def count_tokens(self, messages: list[dict] | None = None, prompt: str | None = None) -> int: ...

    def max_context(self) -> int: ...

    def adapters(self) -> list[str]: ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncEngine(Engine, Protocol):
    """An engine with one continuously batched loop shared by concurrent coroutines."""

    async def agenerate(self, request: GenRequest) -> GenResult: ...

    def astream(self, request: GenRequest) -> AsyncIterator[StreamChunk]: ...

    def num_unfinished(self) -> int: ...


class EngineConfig(Cfg):
    """Which backend and model a stage generates with. One config drives hf and vllm alike."""

    resource_fields = frozenset({"batch_size", "tensor_parallel_size"})

    backend: Literal["hf", "vllm"] = "hf"  # hf (transformers, any device) or vllm
    model: str = "builtin:smollm2-135m-instruct"  # any spec models.loader resolves
    dtype: DType = "fp32"  # fp32 on CPU: bf16 is slower there and changes greedy output
    max_model_len: int = Field(2048, ge=16)  # prompt + completion tokens
    batch_size: int = Field(8, ge=1)  # hf: rows per generate() call; vllm schedules its own batches
    tensor_parallel_size: int = Field(1, ge=1)  # vllm only: GPUs per engine (placement group)
    vllm_kwargs: dict[str, Any] = Field(
        default_factory=lambda: {"enforce_eager": True}
    )  # passed to vLLM's engine args as is
    trust_remote_code: bool = False  # run the model repo's own Python code (off: only trusted architectures)
    adapter: str | None = None  # hf only: a LoRA / Aligner folder merged into the served base
    # Named adapters (name -> folder) served beside the base; a request picks one by name.
    adapters: dict[str, str] = Field(default_factory=dict)
    max_lora_rank: int = Field(64, ge=1)  # vllm: the largest LoRA rank it reserves room for
    seed: int = 0  # engine seed (requests without their own seed)

    def capacity(self, n: int = 1) -> int:
        """Prompt rows (of `n` samples each) the engine runs at once: vLLM's `max_num_seqs` (from
        `vllm_kwargs`, else vLLM's scheduler default of 128 for AsyncLLM) over n, as each sample is
        one of its sequences; HF's `batch_size` (rows per `generate` call, n samples each).
        Generation stages size their shards in flight from it."""
        if self.backend == "vllm":
            seqs = int(self.vllm_kwargs.get("max_num_seqs") or VLLM_DEFAULT_MAX_NUM_SEQS)
            return max(1, seqs // max(n, 1))
        return self.batch_size

    def queue_depth(self) -> int:
        """How many times its capacity a stage keeps in flight for this engine (`auto_in_flight`):
        4 on vLLM, whose running batch refills from any shard's rows; 2 on HF, whose `generate`
        calls run one at a time (more shards waiting would only hold rows)."""
        return 4 if self.backend == "vllm" else 2


# vLLM's `SchedulerConfig.DEFAULT_MAX_NUM_SEQS`, what AsyncLLM runs with when max_num_seqs is unset
# (kept here so a driver sizing a stage's pool need not import vllm).
VLLM_DEFAULT_MAX_NUM_SEQS = 128


class EngineError(RuntimeError):
    """A request that cannot be run (e.g. prompt longer than the context); reported per row."""


def error_result(msg: str, n: int = 1, prompt_tokens: int = 0) -> GenResult:
    return GenResult(
        texts=[""] * n, prompt_tokens=prompt_tokens, completion_tokens=[0] * n, finish_reasons=["error"] * n, error=msg
    )


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """Text up to the earliest stop string (excluded, as vLLM does) and whether one was found."""
    best = -1
    for s in stops:
        if s:
            i = text.find(s)
            if i >= 0 and (best < 0 or i < best):
                best = i
    return (text[:best], True) if best >= 0 else (text, False)


def stream_with_stops(deltas: Iterator[str], stops: list[str]) -> Iterator[str]:
    """Re-chunk deltas so no stop string is ever emitted: hold back a possible stop prefix."""
    stops = [s for s in stops if s]
    if not stops:
        yield from deltas
        return
    hold = max(len(s) for s in stops) - 1
    buf, sent = "", 0
    for d in deltas:
        buf += d
        cut, found = cut_at_stop(buf, stops)
        if found:
            if len(cut) > sent:
                yield cut[sent:]
            return
        safe = len(buf) - hold
        if safe > sent:
            yield buf[sent:safe]
            sent = safe
    if len(buf) > sent:
        yield buf[sent:]


# The most stream deltas one joined chunk holds: a lagging consumer still sees progress in steps.
MAX_JOINED = 8


def merge_chunks(chunks: list[StreamChunk], most: int = MAX_JOINED) -> list[StreamChunk]:
    """Adjacent text deltas of the same choice joined, at most `most` per chunk (order kept, finish
    chunks as they are): a stream whose consumer fell behind catches up in a few hops instead of
    one per token."""
    out: list[StreamChunk] = []
    joined = 0
    for c in chunks:
        last = out[-1] if out else None
        if (
            last is not None
            and last.finish_reason is None
            and c.finish_reason is None
            and last.index == c.index
            and joined < most
        ):
            joined += 1
            out[-1] = StreamChunk(
                index=c.index,
                delta=last.delta + c.delta,
                prompt_tokens=c.prompt_tokens,
                logprobs=last.logprobs + c.logprobs,
            )
        else:
            out.append(c)
            joined = 1
    return out


class TokenizingEngine:
    """Tokenisation shared by both backends: one HF tokenizer renders every prompt to ids, so the
    two backends see identical prompts and greedy fp32 outputs agree token for token."""

    def __init__(self, cfg: EngineConfig):
        from rayalign.models.loader import load_tokenizer

        self.cfg = cfg
        self.model_name = cfg.model
        self.tok = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
        # Several shards (threads) tokenise at once: a fast tokenizer whose settings one call
        # changes while another encodes raises "Already borrowed", so encoding goes one at a time.
        self._tok_lock = threading.Lock()

    def render_ids(self, messages: list[dict] | None = None, prompt: str | None = None) -> list[int]:
        if messages is None and prompt is None:
            raise EngineError("request has neither messages nor prompt")
        with self._tok_lock:
            if messages is not None:
                text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                # the template already holds any special tokens it wants
                return list(self.tok(text, add_special_tokens=False)["input_ids"])
            return list(self.tok(prompt, add_special_tokens=True)["input_ids"])

    def count_tokens(self, messages: list[dict] | None = None, prompt: str | None = None) -> int:
        return len(self.render_ids(messages, prompt))

    def max_context(self) -> int:
        return self.cfg.max_model_len

    def adapters(self) -> list[str]:
        return sorted(self.cfg.adapters)

    def check_adapter(self, name: str | None) -> None:
        if name is not None and name not in self.cfg.adapters:
            raise EngineError(f"unknown adapter {name!r}; loaded: {self.adapters() or 'none'}")

    def prepare(self, req: GenRequest) -> list[int]:
        self.check_adapter(req.adapter)
        ids = list(req.prompt_ids) if req.prompt_ids is not None else self.render_ids(req.messages, req.prompt)
        if len(ids) + req.params.max_tokens > self.max_context():
            raise EngineError(
                f"prompt has {len(ids)} tokens + max_tokens {req.params.max_tokens} > "
                f"max_model_len {self.max_context()}; shorten the input or raise max_model_len"
            )
        return ids

    def close(self) -> None:
        """Nothing to release by default (subclasses holding processes override)."""

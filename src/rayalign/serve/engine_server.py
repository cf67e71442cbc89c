"""The engine deployment: one model copy per replica behind the generic Engine protocol.

On `backend: vllm` the replica holds vLLM's async engine (`AsyncEngine`): every request — streamed
or not, from any number of clients — is submitted to the same continuously batched engine loop,
so the 2nd…Nth client joins the running batch instead of waiting. When a client goes away (the
ingress cancels → Serve cancels this generator) the engine aborts the request and frees its slot.

On `backend: hf` non-streaming requests go through `serve.batch` (concurrent requests share one
`engine.generate` call); streams are consumed in worker threads and share the engine's
continuously batched loop (transformers' manager, `generate/engine/hf_batching.py`), each closed —
its request cancelled in the loop — when its client leaves. Streams the loop cannot run exactly
(log-probs, a fixed seed, an Aligner model) run one `generate` at a time.

Everything a client can get wrong that only the model can judge (prompt longer than the context,
an adapter it does not have) is checked here and returned as an error dict with an HTTP status,
never raised across Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve

from rayalign.generate.engine import (
    AsyncEngine,
    GenRequest,
    GenResult,
    SamplingParams,
    StreamChunk,
    make_engine,
    merge_chunks,
)
from rayalign.serve import pas as pas_mod
from rayalign.serve.config import ServeConfig

log = logging.getLogger("ray.serve")


def error(
    status: int, message: str, param: str | None = None, code: str | None = None, type: str = "invalid_request_error"
) -> dict:
    return {"status": status, "error": {"message": message, "type": type, "param": param, "code": code}}


def _lps(items) -> list[dict]:
    return [{"token": x.token, "logprob": x.logprob, "top": list(x.top)} for x in items]


def _chunk_dict(c: StreamChunk) -> dict:
    if c.finish_reason is not None:
        return {"index": c.index, "finish_reason": c.finish_reason, "completion_tokens": c.completion_tokens}
    return {"index": c.index, "delta": c.delta, "logprobs": _lps(c.logprobs)}


class EngineServer:
    def __init__(self, cfg: dict):
        self.cfg = ServeConfig.model_validate(cfg)
        self.engine = make_engine(self.cfg.engine_config())
        self.hint_engine = None
        if self.cfg.pas.enabled:
            # A separate hint model when one is named; otherwise the served model writes its own hints.
            self.hint_engine = (
                make_engine(
                    self.cfg.engine_config().model_copy(
                        update={"model": self.cfg.pas.model, "adapter": None, "adapters": {}}
                    )
                )
                if self.cfg.pas.model
                else self.engine
            )
        self.is_async = isinstance(self.engine, AsyncEngine)
        # serve.batch wraps the method in an object with these setters; mypy sees the plain function
        self._batched.set_max_batch_size(self.cfg.batch.max_batch_size)  # type: ignore[attr-defined]
        self._batched.set_batch_wait_timeout_s(self.cfg.batch.batch_wait_timeout_s)  # type: ignore[attr-defined]
        self.active_streams = 0
        self.streams_cancelled = 0
        self.deltas_streamed = 0
        self.last_hint: str | None = None  # the latest PAS hint (introspection for tests)
        self.batch_sizes: list[int] = []  # last batch sizes, for tests and the benchmark
        # One thread per request this replica may hold at once (+ spares). With the small default
        # pool, streams parked on the engine's lock could starve the stream holding it: deadlock.
        self.pool = ThreadPoolExecutor(max_workers=self.cfg.max_ongoing_requests + 4, thread_name_prefix="engine")

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args))

    # -- admission ---------------------------------------------------------------------------

    def _admit(self, req: GenRequest, requested_max_tokens: int | None) -> GenRequest | dict:
        """Apply PAS, check adapter, format and context budget, fill in max_tokens (worker thread)."""
        if req.adapter is not None and req.adapter not in self.engine.adapters():
            return error(404, f"The model '{req.adapter}' does not exist", param="model", code="model_not_found")
        fmt = (req.response_format or {}).get("type", "text")
        if fmt != "text" and self.cfg.backend != "vllm":
            return error(
                400,
                f"response_format {fmt!r} needs guided decoding, which backend {self.cfg.backend!r} "
                f"does not do; serve with backend vllm or drop response_format",
                param="response_format",
                code="unsupported_response_format",
            )
        if self.hint_engine is not None and req.messages is not None:
            req = dataclasses.replace(req, messages=self._with_hint(req.messages))
        param = "messages" if req.messages is not None else "prompt"
        try:
            n_prompt = self.engine.count_tokens(messages=req.messages, prompt=req.prompt)
        except Exception as e:
            return error(400, f"could not render the {param}: {e}", param=param, code="invalid_prompt")
        if n_prompt == 0:
            return error(400, f"the {param} is empty (0 tokens); send some text", param=param, code="empty_prompt")
        ctx = self.engine.max_context()
        room = ctx - n_prompt
        want = requested_max_tokens
        if room <= 0 or (want is not None and want > room):
            asked = f" + {want} requested completion tokens (max_tokens)" if want else ""
            return error(
                400,
                f"This model's maximum context length is {ctx} tokens. However, your "
                f"{param} resulted in {n_prompt} tokens{asked}. Shorten the {param} or "
                f"lower max_tokens.",
                param=param,
                code="context_length_exceeded",
            )
        max_tokens = want if want is not None else min(self.cfg.default_max_tokens, room)
        return dataclasses.replace(req, params=req.params.model_copy(update={"max_tokens": max_tokens}))

    def _with_hint(self, messages: list[dict]) -> list[dict]:
        if not any(m.get("role") == "user" for m in messages) or self.hint_engine is None:
            return messages
        words = self.cfg.pas.max_words
        hint_params = SamplingParams(temperature=0.0, max_tokens=self.cfg.pas.max_hint_tokens)
        [res] = self.hint_engine.generate(
            [GenRequest(messages=pas_mod.hint_messages(messages, words), params=hint_params)]
        )
        if not res.ok:  # a failed hint must not fail the user's request: answer without it
            log.warning("PAS hint failed: %s", res.error)
            return messages
        self.last_hint = pas_mod.accept_hint(messages, res.texts[0], words)
        return pas_mod.augment(messages, self.last_hint)

    # -- non-streaming -------------------------------------------------------------------------

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _batched(self, reqs: list[GenRequest]) -> list[GenResult]:
        self.batch_sizes = ([*self.batch_sizes, len(reqs)])[-1000:]
        # The engine call blocks for the whole generation: keep it off the event loop so the
        # replica still answers health checks and streams meanwhile.
        return await self._run(self.engine.generate, reqs)

    async def generate(self, req: GenRequest, requested_max_tokens: int | None = None) -> dict:
        admitted = await self._run(self._admit, req, requested_max_tokens)
        if isinstance(admitted, dict):
            return admitted
        if self.is_async:  # joins the engine's running batch; no batching window needed
            res: GenResult = await self.engine.agenerate(admitted)  # type: ignore[attr-defined]
        else:
            res = await self._batched(admitted)
        if not res.ok:
            return error(500, f"generation failed: {res.error}", type="server_error", code="engine_error")
        return {
            "texts": res.texts,
            "prompt_tokens": res.prompt_tokens,
            "completion_tokens": list(res.completion_tokens),
            "finish_reasons": list(res.finish_reasons),
            "logprobs": None if res.logprobs is None else [_lps(x) for x in res.logprobs],
        }

    # -- streaming -----------------------------------------------------------------------------

    async def stream(self, req: GenRequest, requested_max_tokens: int | None = None) -> AsyncIterator[dict]:
        """Yields {"prompt_tokens"} (or an error dict) first, then {"index", "delta", "logprobs"}
        items, and {"index", "finish_reason", "completion_tokens"} after each choice."""
        admitted = await self._run(self._admit, req, requested_max_tokens)
        if isinstance(admitted, dict):
            yield admitted
            return
        n_prompt = await self._run(self.engine.count_tokens, admitted.messages, admitted.prompt)
        yield {"prompt_tokens": n_prompt}
        self.active_streams += 1
        done = False
        try:
            chunks = self.engine.astream(admitted) if self.is_async else self._thread_stream(admitted)  # type: ignore[attr-defined]
            async for c in held_back(chunks, self.cfg.stream_interval, self.cfg.stream_gap_s):
                if c.finish_reason is None:
                    self.deltas_streamed += 1
                yield _chunk_dict(c)
            done = True
        finally:
            self.active_streams -= 1
            if not done:  # the client left (Serve cancelled or closed us): the engine was told to stop
                self.streams_cancelled += 1

    async def _thread_stream(self, req: GenRequest) -> AsyncIterator[StreamChunk]:
        """A sync engine's streams, choice after choice, each consumed in a worker thread."""
        p = req.params
        for index in range(p.n):
            # distinct seeds keep seeded samples distinct across choices
            seed = None if p.seed is None else p.seed + index
            one = dataclasses.replace(req, params=p.model_copy(update={"n": 1, "seed": seed}))
            it = self.engine.stream(one)
            pending = None
            try:
                while True:
                    # shield: a cancellation must not orphan the thread's result (see finally)
                    pending = asyncio.get_running_loop().run_in_executor(self.pool, next, it, None)
                    c = await asyncio.shield(pending)
                    pending = None
                    if c is None:
                        break
                    yield dataclasses.replace(c, index=index)
            finally:
                # Closing the engine iterator stops its generation; if a worker is still inside
                # next(), close after it returns (closing a running generator fails).
                if pending is not None and not pending.done():
                    pending.add_done_callback(functools.partial(_close_later, self.pool, it))
                else:
                    self.pool.submit(_close, it)

    # -- introspection -------------------------------------------------------------------------

    async def info(self) -> dict[str, Any]:
        return {
            "model": self.cfg.model_name,
            "max_context": self.engine.max_context(),
            "adapters": self.engine.adapters(),
            "backend": self.cfg.backend,
            "pas": self.cfg.pas.enabled,
            "pid": os.getpid(),
        }

    async def stats(self) -> dict[str, Any]:
        return {
            "active_streams": self.active_streams,
            "streams_cancelled": self.streams_cancelled,
            "deltas_streamed": self.deltas_streamed,
            "batch_sizes": list(self.batch_sizes),
            "engine_unfinished": self.engine.num_unfinished() if isinstance(self.engine, AsyncEngine) else None,
        }

    def __del__(self):
        # Serve calls this when a replica stops: let a vLLM engine stop its engine-core process.
        engines = {id(e): e for e in (getattr(self, "engine", None), getattr(self, "hint_engine", None)) if e}
        for eng in engines.values():
            with contextlib.suppress(Exception):
                eng.close()

    async def check_health(self) -> None:
        """Serve's replica health check: a broken engine object restarts the replica."""
        if self.engine is None:
            raise RuntimeError("engine not loaded")


async def held_back(
    chunks: AsyncIterator[StreamChunk], interval: int, gap_s: float = 0.0
) -> AsyncIterator[StreamChunk]:
    """Deltas held back and sent joined: a chunk goes out once it holds `interval` tokens
    (`ServeConfig.stream_interval`) and at least `gap_s` seconds have passed since the stream's
    last one (`stream_interval_ms`). A choice's finish (and the end of the stream) sends what is
    held first, so nothing is lost or reordered; a held delta waits at most until the next token
    arrives after the gap. The gap does not hold back a stream's first chunk (time to first
    token is what a user waits on)."""
    if interval <= 1 and gap_s <= 0:
        async for c in chunks:
            yield c
        return
    held: list[StreamChunk] = []
    last = -math.inf  # the first token goes out at once: coalescing never delays the first byte
    async for c in chunks:
        if c.finish_reason is None:
            held.append(c)
            if len(held) < interval or time.monotonic() - last < gap_s:
                continue
        for m in merge_chunks(held, most=max(interval, len(held))):
            yield m
        if held:
            last = time.monotonic()
        held = []
        if c.finish_reason is not None:
            yield c
    for m in merge_chunks(held, most=max(interval, len(held))):
        yield m


def _close_later(pool: ThreadPoolExecutor, it, _done) -> None:
    pool.submit(_close, it)


def _close(it) -> None:
    with contextlib.suppress(Exception):
        it.close()

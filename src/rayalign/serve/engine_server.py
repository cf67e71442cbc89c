"""The engine deployment: one model copy per replica behind the generic Engine protocol.

Non-streaming requests go through `serve.batch`, so concurrent requests on one replica share a
single `engine.generate` call (one batched forward instead of N). Streaming requests call
`engine.stream` and hand text deltas back one by one; when the caller goes away (client
disconnect → the ingress cancels → Serve cancels this generator) the engine's iterator is closed,
which stops generation and frees the replica's slot.

Everything a client can get wrong that only the model can judge (prompt longer than the context)
is checked here and returned as an error dict with an HTTP status, never raised across Ray.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator

from ray import serve

from rayalign.generate.engine import GenRequest, GenResult, SamplingParams
from rayalign.serve import pas as pas_mod
from rayalign.serve.config import ServeConfig

log = logging.getLogger("ray.serve")

class _End:
    """End of an engine stream, carrying the generator's return value (usage info, if any)."""

    def __init__(self, value):
        self.value = value if isinstance(value, dict) else {}


def _next(it):
    try:
        return next(it)
    except StopIteration as stop:
        return _End(stop.value)


def build_engine(cfg: ServeConfig, model: str | None = None, adapter: str | None = None):
    """Engine for `cfg` through the project's one factory (`rayalign.generate.engine.make_engine`)."""
    from rayalign.generate.engine import EngineConfig, make_engine

    ecfg = EngineConfig(backend=cfg.backend, model=model or cfg.model, adapter=adapter, **cfg.engine)
    return make_engine(ecfg)


def error(status: int, message: str, param: str | None = None, code: str | None = None,
          type: str = "invalid_request_error") -> dict:
    return {"status": status, "error": {"message": message, "type": type, "param": param, "code": code}}


class EngineServer:
    def __init__(self, cfg: dict):
        self.cfg = ServeConfig.model_validate(cfg)
        self.engine = build_engine(self.cfg, adapter=self.cfg.adapter)
        self.hint_engine = None
        if self.cfg.pas.enabled:
            # A separate hint model when one is named; otherwise the served model writes its own hints.
            self.hint_engine = (build_engine(self.cfg, model=self.cfg.pas.model) if self.cfg.pas.model
                                else self.engine)
        self._batched.set_max_batch_size(self.cfg.batch.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.cfg.batch.batch_wait_timeout_s)
        self.active_streams = 0
        self.streams_cancelled = 0
        self.deltas_streamed = 0
        self.last_hint: str | None = None  # the latest PAS hint (introspection for tests)
        self.batch_sizes: list[int] = []  # last batch sizes, for tests and the benchmark
        # One thread per request this replica may hold at once (+ spares). With the small default
        # pool, streams parked on the engine's lock could starve the stream holding it: deadlock.
        self.pool = ThreadPoolExecutor(max_workers=self.cfg.max_ongoing_requests + 4,
                                       thread_name_prefix="engine")

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args))

    # -- admission ---------------------------------------------------------------------------

    def _admit(self, req: GenRequest, requested_max_tokens: int | None) -> GenRequest | dict:
        """Apply PAS, check the context budget, fill in max_tokens. Runs in a worker thread."""
        if self.hint_engine is not None and req.messages is not None:
            req = GenRequest(messages=self._with_hint(req.messages), params=req.params,
                             request_id=req.request_id)
        param = "messages" if req.messages is not None else "prompt"
        try:
            n_prompt = self.engine.count_tokens(messages=req.messages, prompt=req.prompt)
        except Exception as e:  # noqa: BLE001 - e.g. a chat template that rejects the role order
            return error(400, f"could not render the {param}: {e}", param=param, code="invalid_prompt")
        if n_prompt == 0:
            return error(400, f"the {param} is empty (0 tokens); send some text", param=param, code="empty_prompt")
        ctx = self.engine.max_context()
        room = ctx - n_prompt
        want = requested_max_tokens
        if room <= 0 or (want is not None and want > room):
            asked = f" + {want} requested completion tokens (max_tokens)" if want else ""
            return error(400, f"This model's maximum context length is {ctx} tokens. However, your "
                              f"{param} resulted in {n_prompt} tokens{asked}. Shorten the {param} or "
                              f"lower max_tokens.", param=param, code="context_length_exceeded")
        max_tokens = want if want is not None else min(self.cfg.default_max_tokens, room)
        params = req.params.model_copy(update={"max_tokens": max_tokens})
        return GenRequest(messages=req.messages, prompt=req.prompt, params=params, request_id=req.request_id)

    def _with_hint(self, messages: list[dict]) -> list[dict]:
        if not any(m.get("role") == "user" for m in messages):
            return messages
        words = self.cfg.pas.max_words
        hint_params = SamplingParams(temperature=0.0, max_tokens=self.cfg.pas.max_hint_tokens)
        [res] = self.hint_engine.generate([GenRequest(messages=pas_mod.hint_messages(messages, words),
                                                      params=hint_params)])
        if not res.ok:  # a failed hint must not fail the user's request: answer without it
            log.warning("PAS hint failed: %s", res.error)
            return messages
        self.last_hint = pas_mod.accept_hint(messages, res.texts[0], words)
        return pas_mod.augment(messages, self.last_hint)

    # -- non-streaming -------------------------------------------------------------------------

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _batched(self, reqs: list[GenRequest]) -> list[GenResult]:
        self.batch_sizes = (self.batch_sizes + [len(reqs)])[-1000:]
        # The engine call blocks for the whole generation: keep it off the event loop so the
        # replica still answers health checks and streams meanwhile.
        return await self._run(self.engine.generate, reqs)

    async def generate(self, req: GenRequest, requested_max_tokens: int | None = None) -> dict:
        admitted = await self._run(self._admit, req, requested_max_tokens)
        if isinstance(admitted, dict):
            return admitted
        res: GenResult = await self._batched(admitted)
        if not res.ok:
            return error(500, f"generation failed: {res.error}", type="server_error", code="engine_error")
        return {"texts": res.texts, "prompt_tokens": res.prompt_tokens,
                "completion_tokens": list(res.completion_tokens), "finish_reasons": list(res.finish_reasons)}

    # -- streaming -----------------------------------------------------------------------------

    def _count(self, text: str) -> int:
        tok = getattr(self.engine, "tok", None)
        if tok is not None:
            return len(tok(text, add_special_tokens=False)["input_ids"])
        return self.engine.count_tokens(prompt=text)

    async def stream(self, req: GenRequest, requested_max_tokens: int | None = None) -> AsyncIterator[dict]:
        """Yields {"prompt_tokens"} (or an error dict) first, then {"index", "delta"} items, and
        {"index", "finish_reason", "completion_tokens"} after each choice."""
        admitted = await self._run(self._admit, req, requested_max_tokens)
        if isinstance(admitted, dict):
            yield admitted
            return
        n_prompt = await self._run(self.engine.count_tokens, admitted.messages, admitted.prompt)
        yield {"prompt_tokens": n_prompt}
        loop = asyncio.get_running_loop()
        self.active_streams += 1
        it, pending = None, None  # the engine iterator being consumed and its in-flight next()
        try:
            p = admitted.params
            for index in range(p.n):
                # n > 1 streams choice after choice; distinct seeds keep seeded samples distinct.
                seed = None if p.seed is None else p.seed + index
                one = GenRequest(messages=admitted.messages, prompt=admitted.prompt,
                                 params=p.model_copy(update={"n": 1, "seed": seed}), request_id=admitted.request_id)
                it, parts = self.engine.stream(one), []
                while True:
                    # shield: a cancellation must not orphan the thread's result (see finally)
                    pending = loop.run_in_executor(self.pool, _next, it)
                    delta = await asyncio.shield(pending)
                    pending = None
                    if isinstance(delta, _End):
                        end_info = delta.value
                        break
                    if delta:
                        parts.append(delta)
                        self.deltas_streamed += 1
                        yield {"index": index, "delta": delta}
                it = None
                if "completion_tokens" in end_info:  # exact counts from the engine
                    n_tok, finish = end_info["completion_tokens"], end_info.get("finish_reason", "stop")
                else:  # an engine that only yields text: re-tokenise (close, not always exact)
                    n_tok = await self._run(self._count, "".join(parts))
                    finish = "length" if n_tok >= p.max_tokens else "stop"
                yield {"index": index, "finish_reason": finish, "completion_tokens": n_tok}
        finally:
            self.active_streams -= 1
            if it is not None:
                # Abandoned mid-choice (client gone: Serve cancelled us at an await, or closed us
                # at a yield). Closing the engine iterator stops its generation; if a worker is
                # still inside next(), close after it returns (closing a running generator fails).
                self.streams_cancelled += 1
                abandoned = it
                if pending is not None and not pending.done():
                    pending.add_done_callback(lambda _f: self.pool.submit(_close, abandoned))
                else:
                    self.pool.submit(_close, abandoned)

    # -- introspection -------------------------------------------------------------------------

    async def info(self) -> dict[str, Any]:
        return {"model": self.cfg.model_name, "max_context": self.engine.max_context(),
                "backend": self.cfg.backend, "pas": self.cfg.pas.enabled}

    async def stats(self) -> dict[str, Any]:
        return {"active_streams": self.active_streams, "streams_cancelled": self.streams_cancelled,
                "deltas_streamed": self.deltas_streamed,
                "batch_sizes": list(self.batch_sizes)}

    def __del__(self):
        # Serve calls this when a replica stops: let a vLLM engine stop its engine-core process.
        for eng in {id(e): e for e in (getattr(self, "engine", None), getattr(self, "hint_engine", None)) if e}.values():
            close = getattr(eng, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # noqa: BLE001 - shutting down anyway
                    pass

    async def check_health(self) -> None:
        """Serve's replica health check: a broken engine object restarts the replica."""
        if self.engine is None:
            raise RuntimeError("engine not loaded")


def _close(it) -> None:
    try:
        it.close()
    except Exception:  # noqa: BLE001 - best effort: the generation is being abandoned anyway
        pass

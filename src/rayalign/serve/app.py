"""The OpenAI-compatible HTTP ingress and the Serve application that wires it to the engine.

    ingress (FastAPI, num_cpus 0)  ──handle──▶  EngineServer replicas (autoscaled, batched)

On `backend: vllm` the two run as one deployment by default (`ServeConfig.colocate_engine`,
`local_engine.py`): the ingress awaits the async engine in its own process, one hop less per chunk.

The ingress owns everything that needs no model: API-key check, body-size limit, JSON and field
validation, the model name. Each becomes an OpenAI-shaped error with the right status before any
engine work is queued. Overload is bounded twice: the engine deployment's `max_ongoing_requests`
+ `max_queued_requests` (the handle raises BackPressureError → 503 here) and the ingress's own
limits (Serve's proxy answers 503). A slow client never holds more than its own request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from rayalign.generate.engine import GenRequest, SamplingParams
from rayalign.generate.engine.protocol import MAX_JOINED
from rayalign.serve import protocol as P
from rayalign.serve.config import ServeConfig
from rayalign.serve.engine_server import EngineServer
from rayalign.serve.local_engine import LocalEngine

log = logging.getLogger("ray.serve")

api = FastAPI(title="rayalign", docs_url=None, redoc_url=None, openapi_url=None)


# Helpers the ingress's methods call must be defined above the class: `serve.ingress` freezes the
# FastAPI app (a pickle round trip) when the class is defined, keeping only the globals that exist then.
_END = object()


async def _drained(gen: AsyncIterator[dict]) -> AsyncIterator[list[dict]]:
    """A Serve streaming response's items in lists: each list is everything that arrived while the
    previous one was being sent. Under load (ingress or proxy busy) tokens then travel in groups —
    one SSE write, one proxy hop, one client read per group — instead of one of each per token;
    unloaded, every list holds one item and nothing waits."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump():
        try:
            async for item in gen:
                queue.put_nowait(item)
            queue.put_nowait(_END)
        except BaseException as e:  # handed to the consumer, which re-raises it
            queue.put_nowait(e)

    task = asyncio.create_task(pump())
    try:
        while True:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            ready = [x for x in items if isinstance(x, dict)]
            if ready:
                yield ready
            if len(ready) < len(items):
                last = items[len(ready)]
                if isinstance(last, BaseException):
                    raise last
                return
    finally:
        task.cancel()


def _merged(items: list[dict], most: int = MAX_JOINED) -> list[dict]:
    """Adjacent deltas of the same choice joined (text and log-probs), at most `most` per event so a
    lagging stream still advances in steps; finish items kept as they are."""
    out: list[dict] = []
    joined = 0
    for it in items:
        last = out[-1] if out else None
        if last is not None and "delta" in last and "delta" in it and last["index"] == it["index"] and joined < most:
            out[-1] = {**last, "delta": last["delta"] + it["delta"], "logprobs": last["logprobs"] + it["logprobs"]}
            joined += 1
        else:
            out.append(it)
            joined = 1
    return out


def _local_engine(cfg: ServeConfig) -> LocalEngine:
    return LocalEngine(EngineServer(cfg.model_dump()), cfg.max_ongoing_requests, cfg.max_queued_requests)


def _error_response(e: P.ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException):
    # Unknown routes and wrong methods in OpenAI's error shape too, not FastAPI's {"detail": ...}.
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return _error_response(P.ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=kind))


def _overloaded(what: str) -> P.ApiError:
    return P.ApiError(
        503,
        f"server overloaded ({what}); retry shortly",
        type="server_error",
        code="overloaded",
        headers={"Retry-After": "1"},
    )


@serve.ingress(api)
class OpenAIIngress:
    def __init__(self, engine, cfg: dict):
        self.cfg = ServeConfig.model_validate(cfg)
        # engine None: the engine server lives in this process (ServeConfig.colocate_engine)
        self.engine = engine if engine is not None else _local_engine(self.cfg)
        self.created = int(time.time())

    async def engine_stats(self) -> dict:
        """The engine server's counters (active/cancelled streams, engine_unfinished), wherever it runs."""
        return await self.engine.stats.remote()

    async def check_health(self) -> None:
        """Serve's health check: a colocated engine that lost its engine loop restarts the replica."""
        if isinstance(self.engine, LocalEngine):
            await self.engine.server.check_health()

    def __del__(self):
        # Serve calls this when a replica stops: a colocated engine stops its engine-core process now.
        engine = getattr(self, "engine", None)
        if isinstance(engine, LocalEngine):
            engine.server.__del__()

    # -- shared checks ---------------------------------------------------------------------

    def _auth(self, request: Request) -> None:
        key = self.cfg.api_key
        if not key:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not given:
            raise P.ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
        if not hmac.compare_digest(given.encode(), key.encode()):  # constant time: no key oracle
            raise P.ApiError(401, "incorrect API key provided", code="invalid_api_key")

    async def _body(self, request: Request) -> bytes:
        """Read the body, refusing (413) as soon as it passes the limit; never buffers more."""
        limit = self.cfg.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise P.ApiError(413, f"request body is {declared} bytes; the limit is {limit}", code="request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise P.ApiError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def _check_model(self, name: str) -> str | None:
        """The adapter a request's `model` names (None: the base model); 404 for unknown names."""
        if name == self.cfg.model_name:
            return None
        if name in self.cfg.adapters:
            return name
        raise P.ApiError(
            404,
            f"The model '{name}' does not exist; this server serves "
            f"{', '.join(repr(m) for m in self._names())} (see GET /v1/models)",
            param="model",
            code="model_not_found",
        )

    def _names(self) -> list[str]:
        return [self.cfg.model_name, *sorted(self.cfg.adapters)]

    def _params(self, body) -> SamplingParams:
        if body.n > self.cfg.max_n:
            raise P.ApiError(
                400, f"invalid value for 'n': at most {self.cfg.max_n} (got {body.n})", param="n", code="invalid_value"
            )
        # max_tokens is settled by the engine replica, which knows the prompt length.
        return SamplingParams(
            temperature=body.temperature, top_p=body.top_p, stop=body.stop or [], n=body.n, seed=body.seed, max_tokens=1
        )

    async def _handle(self, request: Request, model_cls, make_req, chunk_fn, response_fn, prefix: str):
        try:
            self._auth(request)
            body = P.parse_body(await self._body(request), model_cls, self.cfg.max_body_bytes)
            req = make_req(body, self._params(body))
            req.adapter = self._check_model(body.model)
            req.logprobs = body.logprobs_k()
            req.response_format = body.response_format.model_dump() if body.response_format else None
            if body.stream:
                return await self._stream(req, body, chunk_fn, prefix)
            try:
                out = await self.engine.generate.remote(req, body.requested_max_tokens())
            except Exception as e:
                raise self._engine_failure(e) from None
            if "error" in out:
                raise P.ApiError(out["status"], **out["error"])
            return JSONResponse(response_fn(P.new_id(prefix), body.model, out))
        except P.ApiError as e:
            return _error_response(e)

    def _engine_failure(self, e: Exception) -> P.ApiError:
        from ray.serve.exceptions import BackPressureError

        if isinstance(e, BackPressureError):
            return _overloaded("request queue full")
        log.exception("engine call failed")  # e.g. the replica died: clients may retry
        return P.ApiError(
            503,
            f"engine unavailable: {type(e).__name__}",
            type="server_error",
            code="engine_unavailable",
            headers={"Retry-After": "1"},
        )

    async def _stream(self, req: GenRequest, body, chunk_fn, prefix: str):
        """Server-sent events for one request. One function on purpose: admission, the event loop,
        usage and the error/disconnect paths share the generator's state and its `finally`."""
        gen = self.engine.options(stream=True).stream.remote(req, body.requested_max_tokens())
        try:
            first = await gen.__anext__()  # admission result: errors still get a proper status
        except Exception as e:
            gen.cancel()
            raise self._engine_failure(e) from None
        if "error" in first:
            raise P.ApiError(first["status"], **first["error"])
        rid, created, model = P.new_id(prefix), int(time.time()), body.model
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chat = prefix == "chatcmpl"

        def sse_of(items: list[dict]) -> tuple[bytes, int]:
            """SSE events of engine items (adjacent deltas joined) and the completion tokens they end."""
            out, ended = [], 0
            for item in _merged(items):
                i = item["index"]
                if "delta" in item:
                    payload = {"content": item["delta"]} if chat else item["delta"]
                    lps = item["logprobs"] if req.logprobs is not None else None
                    out.append(P.sse(chunk_fn(rid, model, created, i, payload, None, lps)))
                else:
                    ended += item["completion_tokens"]
                    out.append(P.sse(chunk_fn(rid, model, created, i, {} if chat else "", item["finish_reason"])))
            return b"".join(out), ended

        async def events():
            completion_tokens = 0
            done = False
            try:
                if chat:  # OpenAI opens each choice with the role
                    for i in range(body.n):
                        yield P.sse(chunk_fn(rid, model, created, i, {"role": "assistant", "content": ""}, None))
                async with contextlib.aclosing(_drained(gen)) as batches:
                    async for items in batches:
                        data, ended = sse_of(items)
                        completion_tokens += ended
                        yield data  # one write (one proxy hop) for what arrived together
                if include_usage:
                    obj = "chat.completion.chunk" if chat else "text_completion"
                    yield P.sse(
                        {
                            "id": rid,
                            "object": obj,
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": P.usage(first["prompt_tokens"], completion_tokens),
                        }
                    )
                yield P.sse("[DONE]")
                done = True
            except Exception as e:
                log.exception("stream failed")
                yield P.sse(
                    {
                        "error": {
                            "message": f"stream failed: {type(e).__name__}: {e}",
                            "type": "server_error",
                            "param": None,
                            "code": "stream_error",
                        }
                    }
                )
            finally:
                if not done:  # client disconnected (or error): free the engine slot now
                    gen.cancel()

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    # -- routes ------------------------------------------------------------------------------

    @api.get("/health")
    async def health(self):
        try:
            info = await asyncio.wait_for(self.engine.info.remote(), timeout=10)
        except Exception as e:
            return JSONResponse({"status": "unavailable", "reason": type(e).__name__}, status_code=503)
        return {"status": "ok", **info}

    @api.get("/v1/models")
    async def models(self, request: Request):
        try:
            self._auth(request)
        except P.ApiError as e:
            return _error_response(e)
        return {"object": "list", "data": [self._model_card(name) for name in self._names()]}

    @api.get("/v1/models/{model_id:path}")
    async def model(self, model_id: str, request: Request):
        try:
            self._auth(request)
            self._check_model(model_id)
        except P.ApiError as e:
            return _error_response(e)
        return self._model_card(model_id)

    def _model_card(self, name: str) -> dict:
        card = {"id": name, "object": "model", "created": self.created, "owned_by": "rayalign"}
        if name != self.cfg.model_name:
            card["parent"] = self.cfg.model_name  # an adapter on the base model
        return card

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        return await self._handle(
            request,
            P.ChatCompletionRequest,
            lambda body, params: GenRequest(messages=body.chat_messages(), params=params),
            P.chat_chunk,
            P.chat_response,
            "chatcmpl",
        )

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._handle(
            request,
            P.CompletionRequest,
            lambda body, params: GenRequest(prompt=body.prompt, params=params),
            P.completion_chunk,
            P.completion_response,
            "cmpl",
        )


def engine_placement(cfg: ServeConfig) -> dict:
    """Ray resources of one engine replica. One GPU engine: the replica actor holds the GPU(s).
    Tensor parallel (tp > 1): a STRICT_PACK placement group of tp GPU bundles on one node; the
    replica runs in bundle 0 and vLLM's Ray executor places its workers in the group's bundles."""
    actor: dict = {"num_cpus": cfg.engine_num_cpus}
    if cfg.accelerator_type:
        actor["accelerator_type"] = cfg.accelerator_type
    tp = cfg.engine.tensor_parallel_size
    if tp <= 1 or cfg.backend != "vllm":
        if cfg.engine_num_gpus:
            actor["num_gpus"] = cfg.engine_num_gpus
        return {"ray_actor_options": actor}
    bundle = {"GPU": 1.0}
    if cfg.accelerator_type:
        bundle[f"accelerator_type:{cfg.accelerator_type}"] = 0.001
    # the replica itself needs no GPU: its engine-core drives the workers, each on its own bundle
    bundles = [{"CPU": cfg.engine_num_cpus, **bundle}] + [dict(bundle) for _ in range(tp - 1)]
    actor.pop("accelerator_type", None)
    return {"ray_actor_options": actor, "placement_group_bundles": bundles, "placement_group_strategy": "STRICT_PACK"}


def build_app(cfg: ServeConfig):
    """The Serve application: engine deployment (autoscaled or fixed) bound into the ingress, or
    (`cfg.colocated()`) one deployment whose replicas hold both, placed as engine replicas are."""
    if cfg.colocated():
        opts = _scaling(cfg, dict(**engine_placement(cfg), max_ongoing_requests=cfg.ingress_max_ongoing_requests))
        opts["max_queued_requests"] = cfg.ingress_max_ongoing_requests
        return serve.deployment(name="OpenAIIngress", **opts)(OpenAIIngress).bind(None, cfg.model_dump())
    engine_opts = _scaling(
        cfg,
        dict(
            **engine_placement(cfg),
            max_ongoing_requests=cfg.max_ongoing_requests,
            max_queued_requests=cfg.max_queued_requests,
        ),
    )
    engine = serve.deployment(name="EngineServer", **engine_opts)(EngineServer).bind(cfg.model_dump())
    ingress = serve.deployment(
        name="OpenAIIngress",
        ray_actor_options={"num_cpus": cfg.ingress_num_cpus},
        max_ongoing_requests=cfg.ingress_max_ongoing_requests,
        max_queued_requests=cfg.ingress_max_ongoing_requests,
        **_drain(cfg),
    )(OpenAIIngress)
    return ingress.bind(engine, cfg.model_dump())


def _drain(cfg: ServeConfig) -> dict:
    """How long a stopping replica lets its requests in flight (streams included) finish."""
    return {
        "graceful_shutdown_timeout_s": cfg.graceful_shutdown_timeout_s,
        "graceful_shutdown_wait_loop_s": cfg.graceful_shutdown_wait_loop_s,
    }


def _scaling(cfg: ServeConfig, engine_opts: dict) -> dict:
    """`engine_opts` with the replica count or the autoscaling config of the engine's deployment,
    and its drain settings."""
    engine_opts.update(_drain(cfg))
    if cfg.autoscaling is not None:
        a = cfg.autoscaling
        engine_opts["autoscaling_config"] = {
            "min_replicas": a.min_replicas,
            "max_replicas": a.max_replicas,
            "initial_replicas": max(a.min_replicas, 1),
            "target_ongoing_requests": a.target_ongoing_requests,
            "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s,
        }
    else:
        engine_opts["num_replicas"] = cfg.num_replicas
    return engine_opts


def app_builder(args: dict):
    """Serve application builder: `import_path: rayalign.serve.app:app_builder` with `args:` being a
    ServeConfig mapping (KubeRay RayService serveConfigV2, `serve run`, `serve deploy`).
    `api_key` falls back to $RAYALIGN_API_KEY so manifests can take it from a Secret."""
    import os

    from rayalign.config import validate_config

    data = dict(args or {})
    if not data.get("api_key") and os.environ.get("RAYALIGN_API_KEY"):
        data["api_key"] = os.environ["RAYALIGN_API_KEY"]
    return build_app(validate_config(ServeConfig, data, "serve application args"))

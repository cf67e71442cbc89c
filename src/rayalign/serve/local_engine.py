"""The engine server inside the ingress's own process (`ServeConfig.colocate_engine`).

    ingress + EngineServer (one deployment, one process)  ←  Serve HTTP proxy  ←  clients

With vLLM's async engine a replica needs no batching window and no worker threads: the ingress can
await the engine directly. Dropping the separate engine deployment removes one process and one
Ray streaming hop per chunk (the replica's send, the ingress's receive, their serialisation) —
on a small CPU box that CPU comes straight out of the engine's own cores.

`LocalEngine` offers the slice of a `DeploymentHandle`'s API the ingress uses
(`h.generate.remote(...)`, `h.options(stream=True).stream.remote(...)`, `.cancel()`) over a local
`EngineServer`, and keeps the engine deployment's overload contract: at most
`max_ongoing_requests` requests in the engine at once, `max_queued_requests` waiting behind them,
and past both a `BackPressureError` (the ingress answers 503 with Retry-After) — as Serve's handle
does for a separate engine deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from rayalign.serve.engine_server import EngineServer


class _Slots:
    """`ongoing` requests at once, `queued` more waiting, the rest refused (-1: no queue limit)."""

    def __init__(self, ongoing: int, queued: int):
        self.sem = asyncio.Semaphore(ongoing)
        self.queued, self.waiting = queued, 0

    async def acquire(self) -> None:
        if self.sem.locked() and 0 <= self.queued <= self.waiting:
            from ray.serve.exceptions import BackPressureError

            raise BackPressureError(num_queued_requests=self.waiting, max_queued_requests=self.queued)
        self.waiting += 1
        try:
            await self.sem.acquire()
        finally:
            self.waiting -= 1

    def release(self) -> None:
        self.sem.release()


class _LocalStream:
    """A streaming call: async-iterated like Serve's DeploymentResponseGenerator, `cancel()`led the same."""

    def __init__(self, gen: AsyncIterator[dict], slots: _Slots):
        self._gen, self._slots = gen, slots
        self._items = self._run()
        self._closing: asyncio.Task | None = None

    async def _run(self) -> AsyncIterator[dict]:
        await self._slots.acquire()
        try:
            async for item in self._gen:
                yield item
        finally:
            self._slots.release()
            # closing EngineServer.stream runs its `finally`, whose engine stream aborts the request
            await self._gen.aclose()  # type: ignore[attr-defined]

    def __aiter__(self) -> _LocalStream:
        return self

    async def __anext__(self) -> dict:
        return await self._items.__anext__()

    def cancel(self) -> None:
        """Stop the stream (client gone): close it on the loop, as Serve's cancel does remotely."""

        async def close() -> None:
            with contextlib.suppress(RuntimeError):  # "already running": its consumer is closing it
                await self._items.aclose()  # type: ignore[attr-defined]

        self._closing = asyncio.get_running_loop().create_task(close())  # kept: tasks are weakly held


class _Method:
    def __init__(self, fn: Callable[..., Any], slots: _Slots | None, stream: bool):
        self.fn, self.slots, self.stream = fn, slots, stream

    def remote(self, *args: Any) -> Any:
        if self.stream:
            return _LocalStream(self.fn(*args), self.slots or _Slots(1 << 30, -1))
        return self._call(*args)

    async def _call(self, *args: Any) -> Any:
        if self.slots is None:  # introspection (info, stats) never waits behind generation
            return await self.fn(*args)
        await self.slots.acquire()
        try:
            return await self.fn(*args)
        finally:
            self.slots.release()


class LocalEngine:
    """An `EngineServer` in this process behind a DeploymentHandle-shaped API (see the module doc)."""

    def __init__(self, server: EngineServer, max_ongoing: int, max_queued: int, stream: bool = False):
        self.server = server
        self._slots = _Slots(max_ongoing, max_queued)
        self._stream = stream

    def _fork(self, stream: bool) -> LocalEngine:
        twin = LocalEngine.__new__(LocalEngine)
        twin.server, twin._slots, twin._stream = self.server, self._slots, stream
        return twin

    def options(self, stream: bool = False) -> LocalEngine:
        return self._fork(stream)

    @property
    def generate(self) -> _Method:
        return _Method(self.server.generate, self._slots, self._stream)

    @property
    def stream(self) -> _Method:
        return _Method(self.server.stream, self._slots, self._stream)

    @property
    def info(self) -> _Method:
        return _Method(self.server.info, None, False)

    @property
    def stats(self) -> _Method:
        return _Method(self.server.stats, None, False)

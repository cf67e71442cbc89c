"""Continuous batching for the HF backend's concurrent streams (transformers' own manager).

transformers ships a continuous-batching manager (`model.init_continuous_batching`): a
background thread that keeps one running batch over a paged KV cache, admits new requests at
every step and retires finished ones, so a 2nd…Nth stream joins the batch instead of waiting for
the 1st to end. `StreamBatcher` wraps it for `HFEngine.stream`:

- one manager per served model (base, each named adapter) and decoding mode — greedy, or
  sampled with the request's temperature / top_p applied per row — created on first use;
- a router thread per manager hands each request's outputs to that request's queue (the
  manager's own per-request iterator re-queues other requests' outputs: busy under load);
- the KV cache is sized from the engine config, not from free memory: `batch_size` rows of up to
  `max_model_len` tokens (on CPU transformers' memory-based default makes every step scan a
  cache the size of RAM);
- a consumer that stops early (client gone, stop string) cancels its request in the manager,
  which frees its cache blocks at the next step.

Requests the manager cannot run exactly go through `HFEngine`'s one-`generate`-at-a-time path:
log-probs (per-token top-k), a fixed `seed` (the manager samples from one shared generator) and
models it cannot drive (an Aligner wrapper).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any

from rayalign.generate.engine.protocol import EngineError, SamplingParams

log = logging.getLogger(__name__)

# Tokens per KV-cache page: small pages waste little on short requests (CPU and GPU alike).
PAGE_SIZE = 64
# Prompt tokens one step prefills at most (long prompts are prefilled over several steps, so a
# new request never stalls the running streams for a whole long prompt).
PREFILL_TOKENS = 256
# Defaults of the sampled manager: per-request values replace them (a processor is only built for
# a value other than the neutral one, so the neutral values could not be overridden).
_SAMPLED_DEFAULTS = dict(temperature=0.7, top_p=0.95)
_POLL_S = 0.5


def can_batch(model: Any) -> bool:
    """Whether transformers' manager can drive `model`: a causal LM, plain or with LoRA layers
    (peft injects them into the model's own modules). Not an Aligner model: its hooks read
    padded `[batch, seq]` activations, and the manager runs rows packed into one sequence."""
    return callable(getattr(model, "init_continuous_batching", None)) and getattr(model, "aligner", None) is None


class _Manager:
    """One running transformers manager and the thread that routes its outputs by request id."""

    def __init__(self, model: Any, gen_config: Any, cb_config: Any, name: str):
        self.mgr = model.init_continuous_batching(generation_config=gen_config, continuous_batching_config=cb_config)
        self.queues: dict[str, queue.Queue] = {}
        self.lock = threading.Lock()
        # started from a daemon thread, so its loop thread is a daemon too (threads inherit it):
        # an engine nobody closed must not keep the interpreter from exiting
        starter = threading.Thread(target=self.mgr.start, daemon=True)
        starter.start()
        starter.join()
        # the loop builds its batch processor (and seeds torch) in its own thread: wait for it
        deadline = time.monotonic() + 120
        while self.mgr.batch_processor is None and self.mgr.is_running() and time.monotonic() < deadline:
            time.sleep(0.005)
        self.router = threading.Thread(target=self._route, daemon=True, name=f"cb-router-{name}")
        self.router.start()

    def _route(self) -> None:
        while True:
            out = self.mgr.get_result(timeout=_POLL_S)
            if out is not None:
                with self.lock:
                    q = self.queues.get(out.request_id)
                if q is not None:  # None: a cancelled request's last outputs
                    q.put(out)
            elif not self.mgr.is_running():
                with self.lock:
                    waiting = list(self.queues.values())
                for q in waiting:
                    q.put(EngineError("the continuous-batching loop stopped; see the replica log"))
                return

    def submit(self, rid: str, ids: list[int], max_new_tokens: int, eos: list[int], **row_kw: Any) -> queue.Queue:
        if not self.mgr.is_running():
            raise EngineError("the continuous-batching loop stopped; see the replica log")
        q: queue.Queue = queue.Queue()
        with self.lock:
            self.queues[rid] = q
        got = self.mgr.add_request(
            list(ids), request_id=rid, max_new_tokens=max_new_tokens, streaming=True, eos_token_id=eos, **row_kw
        )
        if got is None:
            self.release(rid, cancel=False)
            raise EngineError("the continuous-batching loop is not accepting requests (stopping)")
        return q

    def release(self, rid: str, cancel: bool) -> None:
        with self.lock:
            self.queues.pop(rid, None)
        if cancel:
            self.mgr.cancel_request(rid)

    def running(self) -> int:
        """Requests the manager holds (running or waiting for a slot)."""
        bp = self.mgr.batch_processor
        if bp is None:
            return 0
        return len(bp.scheduler.active_requests) + len(bp.scheduler.waiting_requests)

    def stop(self) -> None:
        self.mgr.stop(block=True, timeout=10)


class StreamBatcher:
    """Concurrent streams of an HF engine in continuously batched managers (one per model and mode)."""

    def __init__(
        self,
        models: dict[str | None, Any],
        tok: Any,
        eos_ids: set[int],
        rows: int,
        max_context: int,
        engine_lock: threading.Lock,
    ):
        self.models, self.tok, self.rows, self.max_context = models, tok, rows, max_context
        self.engine_lock = engine_lock
        self.eos = sorted(eos_ids) or [-1]
        self._managers: dict[tuple[str | None, bool], _Manager] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()

    def can_run(self, adapter: str | None, params: SamplingParams, logprobs: int | None) -> bool:
        return logprobs is None and params.seed is None and params.n == 1 and can_batch(self.models[adapter])

    def _manager(self, adapter: str | None, greedy: bool) -> _Manager:
        with self._lock:
            m = self._managers.get((adapter, greedy))
            if m is None or not m.mgr.is_running():
                # under the engine's lock: a starting loop reseeds torch's global generator, which
                # must not land inside a seeded `generate` running on the locked path
                with self.engine_lock:
                    m = _Manager(self.models[adapter], self._gen_config(greedy), self._cb_config(), adapter or "base")
                self._managers[(adapter, greedy)] = m
            return m

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Every running loop paused at a step boundary, for a `generate` on the locked path.
        The model must not run two forwards at once: measured, a locked `generate` overlapping
        a loop step got log-probs off by up to 0.09 (30 of 30 tries). Sampled loops also draw
        from torch's global generator, which a seeded `generate` has just seeded."""
        with contextlib.ExitStack() as stack:
            for m in self.managers():
                if m.mgr.is_running():
                    stack.enter_context(m.mgr.pause())
            yield

    def _gen_config(self, greedy: bool) -> Any:
        from transformers import GenerationConfig

        sampling: dict[str, Any] = (
            dict(do_sample=False) if greedy else dict(do_sample=True, top_k=None, **_SAMPLED_DEFAULTS)
        )
        return GenerationConfig(eos_token_id=self.eos, pad_token_id=self.tok.pad_token_id, **sampling)

    def _cb_config(self) -> Any:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        pages = self.rows * math.ceil(self.max_context / PAGE_SIZE)
        return ContinuousBatchingConfig(
            page_size=PAGE_SIZE,
            num_blocks=pages,
            max_batch_tokens=max(PREFILL_TOKENS, self.rows),
            max_requests_per_batch=self.rows,
            allow_block_sharing=False,
            per_request_processors=True,
            auto_switch_to_flash=False,  # keep the model's attention (the locked path shares the model)
        )

    def managers(self) -> list[_Manager]:
        with self._lock:
            return list(self._managers.values())

    def running(self) -> int:
        """Requests inside the managers (a cancelled stream leaves within a step)."""
        return sum(m.running() for m in self.managers())

    def stream(self, ids: list[int], params: SamplingParams, adapter: str | None, state: dict) -> Generator[str]:
        """Text deltas of one request; `state` gets "tokens" (generated so far) and "eos" (the last
        one ends the sequence). Closing the iterator early cancels the request in the manager."""
        greedy = params.temperature <= 0
        row_kw = {} if greedy else dict(temperature=float(params.temperature), top_p=float(params.top_p))
        m = self._manager(adapter, greedy)
        rid = f"rq{next(self._ids)}"
        q = m.submit(rid, ids, params.max_tokens, self.eos, **row_kw)
        finished = False
        offsets = [0, 0]  # decode window: [context start, end of the text already sent]
        try:
            while not finished:
                try:
                    out = q.get(timeout=_POLL_S)
                except queue.Empty:
                    if m.router.is_alive():
                        continue
                    raise EngineError("the continuous-batching loop stopped; see the replica log") from None
                if isinstance(out, Exception):
                    raise out
                if out.error is not None:
                    raise EngineError(f"generation failed: {out.error}")
                finished = out.is_finished()
                toks = out.generated_tokens
                state["tokens"] = len(toks)
                state["eos"] = bool(toks) and toks[-1] in self.eos
                delta = self._delta(toks, offsets, finished)
                if delta:
                    yield delta
        finally:
            m.release(rid, cancel=not finished)

    def _delta(self, toks: list[int], offsets: list[int], finished: bool) -> str:
        """New text of `toks` since the last call, decoding only a window: from the tokens before
        the last sent ones (their context fixes spacing and merges) to the end, so a stream of n
        tokens costs O(n) decoding, not O(n^2). A trailing U+FFFD is a character whose bytes are
        still arriving: held until they do (or the stream ends)."""
        start, read = offsets
        before = self.tok.decode(toks[start:read], skip_special_tokens=True)
        text = self.tok.decode(toks[start:], skip_special_tokens=True)
        if len(text) <= len(before) or (text.endswith("\ufffd") and not finished):
            return ""
        offsets[:] = [read, len(toks)]
        return text[len(before) :]

    def close(self) -> None:
        for m in self.managers():
            try:
                m.stop()
            except Exception as e:  # closing must not raise: the replica is going away
                log.warning("stopping a continuous-batching manager: %s", e)

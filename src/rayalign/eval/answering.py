"""Answer a list of requests with an engine, reporting how many have returned as they come back.

The requests go to the engine in chunks of its capacity (`EngineConfig.capacity`: HF's
`batch_size`, vLLM's `max_num_seqs`), ordered by prompt length the way the HF engine batches them
itself (a stable sort on the token count), so every HF `generate` call gets the same rows it would
have got in one call: the answers are the same as without progress, only reported sooner.
"""

from __future__ import annotations

from collections.abc import Callable

from rayalign.generate.engine import Engine, GenRequest, GenResult


def _order_key(engine: Engine, req: GenRequest) -> tuple[int, int]:
    """Prompt length; requests the engine will refuse (too long, unrenderable) last, since they
    take no place in its batches."""
    try:
        n = engine.count_tokens(messages=req.messages, prompt=req.prompt)
    except Exception:  # fails in generate too, with its message
        return (1, 0)
    return (1, 0) if n + req.params.max_tokens > engine.max_context() else (0, n)


def generate_reporting(
    engine: Engine, requests: list[GenRequest], chunk: int, on_done: Callable[[int], None] | None = None
) -> list[GenResult]:
    """`engine.generate(requests)` in chunks of `chunk`, calling `on_done(answered so far)` after
    each; the results come back in request order."""
    if on_done is None or len(requests) <= chunk:
        results = engine.generate(requests)
        if on_done is not None:
            on_done(len(requests))
        return results
    order = sorted(range(len(requests)), key=lambda i: _order_key(engine, requests[i]))
    out: list[GenResult | None] = [None] * len(requests)
    for s in range(0, len(order), chunk):
        part = order[s : s + chunk]
        for i, res in zip(part, engine.generate([requests[i] for i in part])):
            out[i] = res
        on_done(min(s + chunk, len(order)))
    return out  # type: ignore[return-value]  # every slot was filled above

"""Stream chunks that pile up while a consumer is busy travel joined: adjacent deltas of one choice
become one (text and log-probs concatenated, order kept), finish items stay as they are, and
nothing waits when the consumer keeps up (each batch then holds one item)."""

from __future__ import annotations

import asyncio

import pytest

from rayalign.generate.engine import StreamChunk, TokenLogprob, merge_chunks
from rayalign.serve.app import _drained, _merged


def test_merge_chunks_joins_adjacent_deltas_of_one_choice_only():
    a, b = TokenLogprob("He", -0.5), TokenLogprob("llo", -0.25)
    chunks = [
        StreamChunk(index=0, delta="He", prompt_tokens=3, logprobs=[a]),
        StreamChunk(index=0, delta="llo", prompt_tokens=3, logprobs=[b]),
        StreamChunk(index=1, delta="Hi", prompt_tokens=3),
        StreamChunk(index=0, delta="!", prompt_tokens=3),
        StreamChunk(index=0, finish_reason="stop", prompt_tokens=3, completion_tokens=3),
        StreamChunk(index=0, delta="late", prompt_tokens=3),
    ]
    out = merge_chunks(chunks)
    assert [(c.index, c.delta, c.finish_reason) for c in out] == [
        (0, "Hello", None),
        (1, "Hi", None),
        (0, "!", None),
        (0, "", "stop"),
        (0, "late", None),
    ]
    assert out[0].logprobs == [a, b] and out[0].prompt_tokens == 3
    assert out[3].completion_tokens == 3
    assert merge_chunks([]) == []


def test_ingress_merge_keeps_finish_items_and_choice_order():
    items = [
        {"index": 0, "delta": "a", "logprobs": [{"token": "a", "logprob": -1.0, "top": []}]},
        {"index": 0, "delta": "b", "logprobs": [{"token": "b", "logprob": -2.0, "top": []}]},
        {"index": 0, "finish_reason": "length", "completion_tokens": 2},
        {"index": 1, "delta": "c", "logprobs": []},
    ]
    assert _merged(items) == [
        {
            "index": 0,
            "delta": "ab",
            "logprobs": [{"token": "a", "logprob": -1.0, "top": []}, {"token": "b", "logprob": -2.0, "top": []}],
        },
        {"index": 0, "finish_reason": "length", "completion_tokens": 2},
        {"index": 1, "delta": "c", "logprobs": []},
    ]


async def _source(n: int, gap: float, fail: bool = False):
    for i in range(n):
        await asyncio.sleep(gap)
        yield {"index": 0, "delta": str(i), "logprobs": []}
    if fail:
        raise RuntimeError("replica died")


@pytest.mark.timeout(30)
def test_drained_groups_what_arrived_while_the_consumer_was_busy():
    async def consume(busy: float, gap: float) -> list[list[dict]]:
        batches = []
        async for items in _drained(_source(6, gap)):
            batches.append(items)
            await asyncio.sleep(busy)
        return batches

    slow = asyncio.run(consume(busy=0.2, gap=0.01))
    assert [d["delta"] for b in slow for d in b] == ["0", "1", "2", "3", "4", "5"]  # every item once, in order
    assert len(slow) < 6 and max(len(b) for b in slow) > 1
    fast = asyncio.run(consume(busy=0.0, gap=0.02))
    assert [len(b) for b in fast] == [1] * 6  # a consumer that keeps up gets each item alone


@pytest.mark.timeout(30)
def test_drained_hands_over_items_then_raises_the_source_error():
    async def consume():
        seen = []
        with pytest.raises(RuntimeError, match="replica died"):
            async for items in _drained(_source(3, 0.0, fail=True)):
                seen.extend(d["delta"] for d in items)
        return seen

    assert asyncio.run(consume()) == ["0", "1", "2"]


def test_joining_stops_at_max_joined_so_a_lagging_stream_still_advances_in_steps():
    from rayalign.generate.engine.protocol import MAX_JOINED

    assert MAX_JOINED == 8
    out = merge_chunks([StreamChunk(index=0, delta=str(i % 10)) for i in range(20)])
    assert [c.delta for c in out] == ["01234567", "89012345", "6789"]
    items = [{"index": 0, "delta": "x", "logprobs": []} for _ in range(9)]
    assert [d["delta"] for d in _merged(items)] == ["x" * 8, "x"]


def test_stream_interval_holds_deltas_back_and_flushes_at_each_finish():
    from rayalign.serve.engine_server import held_back

    async def src():
        for ch in "abcde":
            yield StreamChunk(index=0, delta=ch)
        yield StreamChunk(index=0, finish_reason="length", completion_tokens=5)
        yield StreamChunk(index=1, delta="x")  # a later choice, ended by the stream's end alone

    async def run(k: int) -> list[tuple[int, str, str | None]]:
        return [(c.index, c.delta, c.finish_reason) async for c in held_back(src(), k)]

    assert asyncio.run(run(2)) == [(0, "ab", None), (0, "cd", None), (0, "e", None), (0, "", "length"), (1, "x", None)]
    assert asyncio.run(run(8)) == [(0, "abcde", None), (0, "", "length"), (1, "x", None)]
    assert asyncio.run(run(1)) == [(0, ch, None) for ch in "abcde"] + [(0, "", "length"), (1, "x", None)]


def test_stream_interval_ms_joins_what_arrived_within_the_gap_and_loses_nothing():
    """Deltas 10 ms apart, at most one chunk per 45 ms: chunks of several tokens (a slower box only
    makes them larger), the text intact, the finish after every delta of its choice."""
    from rayalign.serve.engine_server import held_back

    async def src():
        for i in range(30):
            await asyncio.sleep(0.01)
            yield StreamChunk(index=0, delta=str(i % 10))
        yield StreamChunk(index=0, finish_reason="length", completion_tokens=30)

    async def run(k: int, gap_s: float) -> list[StreamChunk]:
        return [c async for c in held_back(src(), k, gap_s)]

    out = asyncio.run(run(1, 0.045))
    assert "".join(c.delta for c in out) == "".join(str(i % 10) for i in range(30))
    assert [c.finish_reason for c in out][-1] == "length" and all(c.finish_reason is None for c in out[:-1])
    deltas = [c for c in out if c.finish_reason is None]
    assert deltas[0].delta == "0"  # the first token is never held back
    assert len(deltas) <= 30 * 10 // 45 + 2  # then at most one per gap: ≤ 8 chunks, not 30
    assert all(len(c.delta) >= 2 for c in deltas[1:-1])
    # count and time together: every chunk holds at least 4 tokens (the last may hold the rest)
    four = [c for c in asyncio.run(run(4, 0.015)) if c.finish_reason is None]
    assert "".join(c.delta for c in four) == "".join(str(i % 10) for i in range(30))
    assert all(len(c.delta) >= 4 for c in four[:-1])
    assert asyncio.run(run(1, 0.0))[0].delta == "0" and len(asyncio.run(run(1, 0.0))) == 31  # off: every token

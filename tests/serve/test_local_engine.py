"""The colocated engine's admission (`local_engine._Slots`): the engine deployment's contract of
`max_ongoing_requests` at once, `max_queued_requests` waiting, Serve's BackPressureError past both."""

from __future__ import annotations

import asyncio

import pytest
from ray.serve.exceptions import BackPressureError

from rayalign.serve.local_engine import _Slots


def test_two_ongoing_one_queued_then_refused_and_freed_slots_admit_again():
    async def run() -> list[str]:
        slots = _Slots(ongoing=2, queued=1)
        await slots.acquire()
        await slots.acquire()  # 2 ongoing
        waiter = asyncio.create_task(slots.acquire())  # 1 queued
        await asyncio.sleep(0)
        events = [f"waiting {slots.waiting}"]
        with pytest.raises(BackPressureError):
            await slots.acquire()  # a 4th: the queue is full
        events.append("refused")
        slots.release()  # one ends: the queued one gets its slot
        await asyncio.wait_for(waiter, 1)
        events.append(f"admitted, waiting {slots.waiting}")
        third = asyncio.create_task(slots.acquire())  # queues again (room for one)
        await asyncio.sleep(0)
        assert not third.done()
        slots.release()
        await asyncio.wait_for(third, 1)
        events.append("queued again and admitted")
        return events

    assert asyncio.run(run()) == ["waiting 1", "refused", "admitted, waiting 0", "queued again and admitted"]


def test_no_queue_limit_never_refuses():
    async def run() -> int:
        slots = _Slots(ongoing=1, queued=-1)
        await slots.acquire()
        waiters = [asyncio.create_task(slots.acquire()) for _ in range(50)]
        await asyncio.sleep(0)
        n = slots.waiting
        for _ in waiters:
            slots.release()
        await asyncio.wait_for(asyncio.gather(*waiters), 5)
        return n

    assert asyncio.run(run()) == 50

"""The gateway's admission gate: slots, a bounded queue, a bounded wait (gateway/admission.py).
The overload test on real processes is tests/e2e/test_faults.py."""

from __future__ import annotations

import asyncio

import pytest

from gateway.admission import Admission, Overloaded
from gateway.errors import APIError


async def hold(admission: Admission, release: asyncio.Event) -> str:
    async with admission.slot():
        await release.wait()
    return "done"


def test_a_full_queue_refuses_at_once_and_queued_requests_run_when_slots_free():
    asyncio.run(_a_full_queue_refuses_at_once_and_queued_requests_run_when_slots_free())


async def _a_full_queue_refuses_at_once_and_queued_requests_run_when_slots_free():
    admission, release = Admission(max_inflight=2, max_queued=1, queue_timeout_s=30), asyncio.Event()
    tasks = [asyncio.create_task(hold(admission, release)) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert (admission.running, admission.waiting) == (2, 1)
    with pytest.raises(Overloaded):
        async with admission.slot():
            pass
    release.set()
    assert await asyncio.gather(*tasks) == ["done"] * 3
    assert (admission.running, admission.waiting) == (0, 0)


def test_a_queued_request_waits_at_most_the_queue_timeout():
    asyncio.run(_a_queued_request_waits_at_most_the_queue_timeout())


async def _a_queued_request_waits_at_most_the_queue_timeout():
    admission, release = Admission(max_inflight=1, max_queued=4, queue_timeout_s=0.05), asyncio.Event()
    holder = asyncio.create_task(hold(admission, release))
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded, match="within 0.05 s"):
        async with admission.slot():
            pass
    assert admission.waiting == 0
    release.set()
    await holder


def test_a_cancelled_waiter_gives_its_place_back():
    asyncio.run(_a_cancelled_waiter_gives_its_place_back())


async def _a_cancelled_waiter_gives_its_place_back():
    admission, release = Admission(max_inflight=1, max_queued=1, queue_timeout_s=30), asyncio.Event()
    holder = asyncio.create_task(hold(admission, release))
    waiter = asyncio.create_task(hold(admission, release))
    await asyncio.sleep(0.01)
    waiter.cancel()   # its client left while queued
    await asyncio.sleep(0.01)
    assert admission.waiting == 0
    release.set()
    await holder
    async with admission.slot():
        assert admission.running == 1


def test_overloaded_is_a_503_with_retry_after():
    err = APIError.unavailable(Overloaded("queue full"))
    assert err.status == 503 and err.headers["retry-after"] == "1"
    assert err.body()["error"]["code"] == "overloaded" and err.body()["error"]["type"] == "server_error"

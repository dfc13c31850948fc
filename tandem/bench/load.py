"""When requests are sent: arrival schedules and the dispatcher that keeps to them.

As in ``vllm bench serve``: open-loop arrivals have gamma-distributed gaps with shape
``burstiness`` and mean ``1/rate`` (burstiness 1 is a Poisson process; below 1 burstier, above 1
more regular; the gaps' squared coefficient of variation is ``1/burstiness``), the first at 0. An
infinite rate sends everything at 0. A concurrency cap makes a request wait for a free slot after
its arrival; with an infinite rate that is a closed loop: N users, each sending its next request
when the previous one finishes.

Offsets are kept against one start time, so a late wake-up does not delay later arrivals.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from typing import Awaitable, Callable, Iterable, Iterator, TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")


def arrival_offsets(rate: float, burstiness: float, rng: np.random.Generator) -> Iterator[float]:
    """Endless arrival times in seconds after the start: 0, then cumulative gamma gaps."""
    if math.isinf(rate):
        yield from itertools.repeat(0.0)
        return
    shape, scale = burstiness, 1.0 / (rate * burstiness)
    t = 0.0
    while True:
        yield t
        t += float(rng.gamma(shape, scale))


async def dispatch(items: Iterable[T], offsets: Iterable[float],
                   send: Callable[[T, float], Awaitable[R]], *, start: float,
                   concurrency: int | None = None, duration: float | None = None,
                   clock: Callable[[], float] = time.perf_counter) -> list[R]:
    """Send each item at ``start + offset`` (or later, when a slot frees); return the results.

    ``send(item, scheduled_at)`` gets the time the schedule released the item. Dispatching stops
    when the items run out or, with ``duration``, once ``duration`` seconds have passed since
    ``start``; the requests already sent are awaited either way.
    """
    slots = asyncio.Semaphore(concurrency) if concurrency else None
    tasks: list[asyncio.Task[R]] = []
    for item, offset in zip(items, offsets):
        if duration is not None and offset >= duration:
            break
        delay = start + offset - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        if slots is not None:
            await slots.acquire()
        if duration is not None and clock() - start >= duration:
            if slots is not None:
                slots.release()
            break
        tasks.append(asyncio.create_task(_send_in_slot(send, item, start + offset, slots)))
    return list(await asyncio.gather(*tasks))


async def _send_in_slot(send: Callable[[T, float], Awaitable[R]], item: T, scheduled_at: float,
                        slots: asyncio.Semaphore | None) -> R:
    try:
        return await send(item, scheduled_at)
    finally:
        if slots is not None:
            slots.release()

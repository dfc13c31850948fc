"""Admission: how many generations one gateway runs at once, and how many may wait for a turn.

Rules:
- A generation takes a *slot* before anything reaches a worker; at most ``max_inflight`` hold one
  (``TANDEM_MAX_INFLIGHT_REQUESTS``). The slot is given back when its token stream is closed:
  finished, failed, or its client left.
- While every slot is taken, up to ``max_queued`` more generations wait, first come first served
  (``TANDEM_MAX_QUEUED_REQUESTS``), each at most ``queue_timeout_s`` (``TANDEM_QUEUE_TIMEOUT_S``)
  and never past its request's own deadline (``Generation`` bounds every wait by it).
- One more than that, or a wait that ran out, is refused at once with ``Overloaded``: a 503
  ``overloaded`` with ``Retry-After`` (errors.py). Nothing reached a worker, so it is safe to retry.
Both APIs, streamed or not, background Responses and each turn of a tool loop pass through here:
the gate wraps the ``Backend`` (``AdmittedBackend``). The bound is per gateway process.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from .backend import Backend, BackendUnavailable, BackendWrapper, GenerateParams, TokenChunk

RETRY_AFTER_S = 1   # what a refused client is told to wait: slots turn over within seconds


class Overloaded(BackendUnavailable):
    """Every slot is taken and the queue is full (or the wait for a slot ran out)."""

    retry_after_s = RETRY_AFTER_S


class Admission:
    def __init__(self, max_inflight: int, max_queued: int, queue_timeout_s: float):
        if max_inflight < 1 or max_queued < 0 or queue_timeout_s <= 0:
            raise ValueError(f"bad admission bounds: {max_inflight=}, {max_queued=}, {queue_timeout_s=}")
        self.max_inflight, self.max_queued, self.queue_timeout_s = max_inflight, max_queued, queue_timeout_s
        self._slots = asyncio.Semaphore(max_inflight)
        self.running = 0    # generations holding a slot
        self.waiting = 0    # generations queued for one

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the body of the ``async with``; ``Overloaded`` if none comes in time."""
        if self.running >= self.max_inflight and self.waiting >= self.max_queued:
            raise Overloaded(f"this gateway runs {self.running} requests and {self.waiting} more "
                             f"are queued (limits {self.max_inflight} and {self.max_queued})")
        self.waiting += 1
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise Overloaded(f"no request slot became free within {self.queue_timeout_s:g} s") from None
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()


class AdmittedBackend(BackendWrapper):
    """``inner`` with every ``generate`` run inside an ``Admission`` slot."""

    def __init__(self, inner: Backend, admission: Admission):
        super().__init__(inner)
        self.admission = admission

    async def generate(self, params: GenerateParams) -> AsyncIterator[TokenChunk]:
        async with self.admission.slot():
            chunks = self.inner.generate(params)
            try:
                async for chunk in chunks:
                    yield chunk
            finally:
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()

"""One stored response's event log, written off the token path.

``EventLog.append`` only queues an event; one writer task per response sends everything queued
as one batch (one Lua call: XADD per event plus the stream's TTL) while the run goes on, and the
next batch as soon as that one is in. So a token reaches the client without waiting for Redis.

Rules:
- Order: batches go one at a time, in append order; Redis rejects any event not after the last.
- Bound: at most ``max_unflushed`` events are appended but not yet confirmed in Redis: ``room()``
  (awaited after each append) waits while that many are outstanding. A gateway that dies therefore
  loses at most the last ``max_unflushed`` events (``TANDEM_EVENT_LOG_BATCH``, 32 by default) —
  typically only those of the one round trip in flight. What is in Redis is always a gapless prefix.
- ``flush()`` waits until every appended event is in Redis. A run calls it before it saves its
  final record and before it sends the terminal event, so a client that saw the end can replay it
  all from any replica.
- A failed write (Redis down) ends the log: ``error`` is set, later appends are dropped, and
  ``flush()``/``room()`` raise it; the run then fails the response.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .store import ResponseStore, StoreUnavailable

log = logging.getLogger(__name__)


class EventLog:
    def __init__(self, store: ResponseStore, response_id: str, max_unflushed: int = 32):
        if max_unflushed < 1:
            raise ValueError(f"max_unflushed must be >= 1, got {max_unflushed}")
        self.store = store
        self.response_id = response_id
        self.max_unflushed = max_unflushed
        self.error: StoreUnavailable | None = None
        self._pending: list[dict[str, Any]] = []
        self._in_flight = 0
        self._wake = asyncio.Event()           # set by append: the writer has work
        self._changed = asyncio.Condition()    # notified by the writer after every batch
        self._writer: asyncio.Task | None = None

    @property
    def unflushed(self) -> int:
        return len(self._pending) + self._in_flight

    def append(self, event: dict[str, Any]) -> None:
        """Queue ``event`` for the log (never waits); dropped once the log has failed."""
        if self.error is not None:
            return
        self._pending.append(event)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_batches())
        self._wake.set()

    async def room(self) -> None:
        """Wait while ``max_unflushed`` events are outstanding; raise the log's failure."""
        await self._wait_until(lambda: self.unflushed < self.max_unflushed)

    async def flush(self) -> None:
        """Wait until every appended event is in Redis; raise the log's failure."""
        await self._wait_until(lambda: self.unflushed == 0)

    async def close(self) -> None:
        """Stop the writer (what it has not sent is dropped). Idempotent."""
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)

    async def _wait_until(self, ready) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.error is not None or ready())
        if self.error is not None:
            raise self.error

    async def _write_batches(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            self._in_flight = len(batch)
            try:
                await self.store.append_events(self.response_id, batch)
            except StoreUnavailable as err:
                log.warning("response %s: event log write failed: %s", self.response_id, err.message)
                self.error = err
            except Exception as exc:          # a bug (e.g. an out-of-order event): fail loudly
                log.exception("response %s: event log write failed", self.response_id)
                self.error = StoreUnavailable(f"event log write failed ({type(exc).__name__})")
            async with self._changed:
                self._in_flight = 0
                if self.error is not None:
                    self._pending.clear()
                self._changed.notify_all()
            if self.error is not None:
                return


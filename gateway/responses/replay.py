"""Replaying a response's stored event log, and following it while the response runs.

``GET /v1/responses/{id}?stream=true&starting_after=N`` (on any replica) and a streamed background
``POST`` read the Redis event log: the events after ``N``, then new ones as the running replica
appends them, until the terminal event. New events are awaited with XREAD BLOCK (in
``BLOCK_MS`` slices), so they arrive as soon as they are written; between slices with nothing new
the record's status is read (at most once per slice). Keep-alive comments on an idle stream are
the SSE response's job (gateway/sse.py).

When to stop:
- after the terminal event (``response.completed`` / ``incomplete`` / ``failed``);
- when the record is gone (deleted), or says ``cancelled`` and the log has nothing more
  (a cancelled response has no terminal event);
- when the record says finished but its terminal event does not come within ``GRACE_S`` (the
  running replica logs the closing events just before it saves the record, so this is rare);
- a running record whose runner's lease is gone (lease.py) is set ``failed`` with a
  ``response.failed`` event when the status is read: the follower then reads that event and ends;
- when nothing at all happens for ``idle_timeout_s``, or the store
  becomes unreachable: then one ``error`` event says so (reference §2.6: a ``type: "error"``
  event, never a top-level ``error`` key, which the SDK would raise on).
"""

from __future__ import annotations

import time
from typing import Any, AsyncIterator

from ..errors import APIError
from .events import TERMINAL_TYPES
from .object import ACTIVE
from .store import ORPHANED, ResponseStore

BLOCK_MS = 500
GRACE_S = 1.0


async def follow(store: ResponseStore, response_id: str, after: int, *,
                 idle_timeout_s: float) -> AsyncIterator[dict[str, Any]]:
    """The events of ``response_id`` with ``sequence_number > after``, live until it ends."""
    last_news, finished_at = time.monotonic(), None
    try:
        while True:
            events = await store.events_after(response_id, after, block_ms=BLOCK_MS)
            for event in events:
                yield event
                after = event["sequence_number"]
                if event["type"] in TERMINAL_TYPES:
                    return
            now = time.monotonic()
            if events:
                last_news = now
                continue
            if finished_at is None:
                status = await _status(store, response_id)
                if status in (None, "cancelled"):   # what it logged before it ended, then stop
                    for event in await store.events_after(response_id, after):
                        yield event
                    return
                if status not in ACTIVE:
                    finished_at = now
            elif now - finished_at > GRACE_S:
                return
            if now - last_news > idle_timeout_s:
                yield _error(after, "stream_stalled", f"Response {response_id} has had no new "
                             f"events for {idle_timeout_s:g} seconds; the gateway running it may "
                             "have stopped.")
                return
    except APIError as err:                         # the store went away mid-stream
        yield _error(after, err.code or "server_error", err.message)


async def _status(store: ResponseStore, response_id: str) -> str | None:
    """The record's status; a running one whose runner is gone becomes ``failed`` (its
    ``response.failed`` event is then the next one to read)."""
    response = await store.get(response_id)
    orphan = response is not None and response["status"] in ACTIVE and not await store.leased(response_id)
    if orphan:
        response = await store.fail_orphan(response_id, ORPHANED)
    return None if response is None else response["status"]


def _error(after: int, code: str, message: str) -> dict[str, Any]:
    """A stream-level ``error`` event (reference §2.6), numbered after the last event sent."""
    return {"type": "error", "sequence_number": after + 1, "code": code, "param": None,
            "message": message}

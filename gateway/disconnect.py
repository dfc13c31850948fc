"""Waiting on work while watching for the client to go away.

Used while the handler itself waits on the backend (the first token, or a whole non-streamed
completion). Once a streaming response has started, Starlette watches for the disconnect instead
and cancels the stream (see ``gateway.sse.SSEResponse``).
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

from fastapi import Request

from .errors import APIError

T = TypeVar("T")


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise a 499 ``APIError``.

    Cancelling ``work`` while it awaits the backend closes the backend iterator, which aborts the
    request and frees its KV.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
        watcher.cancel()
        await asyncio.wait((task, watcher))
    if task in done:
        return task.result()
    raise APIError(499, "The client closed the request.", code="client_closed_request")


async def _disconnected(request: Request) -> None:
    """Return when the ASGI server reports ``http.disconnect`` (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass

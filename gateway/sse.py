"""Server-sent events for both APIs, over ``sse-starlette``.

Rules:
- An event is a dict ``{"data": <compact JSON or [DONE]>, "event": <type, Responses only>}``;
  lines end with ``\\n`` (what OpenAI sends).
- A stream sends a keep-alive comment (``: ping ...``) every ``keepalive_s`` seconds
  (``TANDEM_SSE_KEEPALIVE_S``, 15 s by default), so proxies that cut idle connections at 60 s keep
  a quiet ``follow`` stream open. Clients ignore comments.
- Disconnects are handled here, once: sse-starlette watches for ``http.disconnect`` and cancels
  the stream; ``SSEResponse`` then always closes the body iterator — also when the client left
  before it was iterated at all — and closing it closes whatever it streams (a Generation aborts
  the request on the workers and frees its KV; a ResponseRun records ``cancelled``).
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Awaitable, Callable

from sse_starlette.sse import EventSourceResponse
from starlette.types import Receive, Scope, Send

Event = dict[str, str]
DONE: Event = {"data": "[DONE]"}


def data_event(payload: dict[str, Any], event: str | None = None) -> Event:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return {"data": data} if event is None else {"event": event, "data": data}


class SSEResponse(EventSourceResponse):
    """A ``text/event-stream`` response that keeps idle streams alive and always closes its body.

    ``on_close`` (optional) runs after the body is closed, however the response ended.
    """

    def __init__(self, events: AsyncIterator[Event], keepalive_s: float,
                 on_close: Callable[[], Awaitable[None]] | None = None):
        super().__init__(events, ping=keepalive_s, sep="\n",
                         headers={"cache-control": "no-cache"})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            if self._on_close is not None:
                await self._on_close()

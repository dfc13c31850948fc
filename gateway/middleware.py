"""Per-request context for every HTTP request, and the last-resort 500.

``RequestContextMiddleware`` (pure ASGI, so it neither buffers nor breaks streaming) stamps each
request with an id and its arrival time (``time.perf_counter()``, the clock ``TokenChunk.arrival``
uses), adds ``x-request-id`` to every response, and turns an exception nobody handled into a logged
500 whose body carries no stack trace.
"""

from __future__ import annotations

import logging
import time
import uuid

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError

log = logging.getLogger(__name__)


def request_id(request: Request) -> str:
    """The request's id (32 hex digits); the client sees it as ``x-request-id: req_<id>``."""
    return request.state.request_id


def arrival(request: Request) -> float:
    """When the request reached the gateway (``time.perf_counter()``)."""
    return request.state.arrival


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4().hex
        scope.setdefault("state", {}).update(request_id=rid, arrival=time.perf_counter())
        header = (b"x-request-id", f"req_{rid}".encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request req_%s: unhandled error", rid)
            if started:
                raise
            await APIError.internal().response()(scope, receive, send_with_id)

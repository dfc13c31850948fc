"""Per-request context for every HTTP request, the body size limit, and the last-resort 500.

Both middlewares are pure ASGI, so neither breaks streaming responses:
- ``RequestContextMiddleware`` stamps each request with an id and its arrival time
  (``time.perf_counter()``, the clock ``TokenChunk.arrival`` uses), adds ``x-request-id`` to every
  response, and turns an exception nobody handled into a logged 500 whose body carries no stack
  trace.
- ``BodyLimitMiddleware`` reads the request body before the app sees it and answers 413
  (``request_too_large``, an OpenAI-style body) as soon as it passes ``max_body_bytes`` (or its
  ``content-length`` says it will), so an oversized body is never parsed or tokenized. Messages
  after the body (``http.disconnect``) pass through unchanged.
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


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"0")
        body = None if _too_long(declared, self.max_body_bytes) else await self._read(receive)
        if body is None:
            await self._refuse(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or None once it passes the limit."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":     # the client left: nothing more to read
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = APIError(413, f"The request body is larger than this server's limit of "
                            f"{self.max_body_bytes} bytes.", code="request_too_large")
        await err.response()(scope, receive, send)


def _too_long(declared: bytes, limit: int) -> bool:
    try:
        return int(declared) > limit
    except ValueError:
        return False

"""Streaming Chat Completions: ``chat.completion.chunk`` objects as server-sent events.

Event order: a chunk with ``delta.role``; one chunk per non-empty text delta (with ``full_text``, the
whole text so far, when ``fullTextEnabled``); a chunk with ``finish_reason``; with
``stream_options.include_usage`` a chunk with ``choices: []`` and the usage; then ``data: [DONE]``.
A failure after the stream has started ends it with ``data: {"error": {...}}`` (the OpenAI SDK
raises ``APIError`` on it) and then ``[DONE]``.
"""

from __future__ import annotations

import json
import logging
from typing import Any, AsyncIterator

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from .errors import APIError
from .generation import Generation

log = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"


class ChunkWriter:
    """Builds the events of one streamed completion; every chunk has the same id and created."""

    def __init__(self, completion_id: str, model: str, created: int, *, include_usage: bool,
                 full_text: bool):
        self.completion_id = completion_id
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self.full_text = full_text
        self.text = ""

    def role(self) -> str:
        return self._chunk({"role": "assistant", "content": ""})

    def content(self, text: str) -> str:
        self.text += text
        return self._chunk({"content": text}, **({"full_text": self.text} if self.full_text else {}))

    def finish(self, reason: str | None) -> str:
        return self._chunk({}, finish_reason=reason)

    def usage(self, usage: dict[str, Any]) -> str:
        return _event({**self._head(), "choices": [], "usage": usage})

    @staticmethod
    def error(err: APIError) -> str:
        return _event(err.body())

    def _head(self) -> dict[str, Any]:
        return {"id": self.completion_id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model}

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> str:
        body = {**self._head(), "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": finish_reason}]}
        if self.include_usage:
            body["usage"] = None
        return _event({**body, **extra})


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def chat_events(generation: Generation, writer: ChunkWriter) -> AsyncIterator[str]:
    """The SSE body of a started ``generation``; closes it however the stream ends."""
    try:
        yield writer.role()
        try:
            async for chunk in generation:
                if chunk.text:
                    yield writer.content(chunk.text)
            yield writer.finish(generation.finish_reason)
            if writer.include_usage:
                yield writer.usage(generation.usage.to_dict())
        except APIError as err:
            yield writer.error(err)
        except Exception:
            log.exception("request %s: stream failed", generation.request_id)
            yield writer.error(APIError.internal())
        yield DONE
    finally:
        await generation.aclose()


class SSEResponse(StreamingResponse):
    """A ``text/event-stream`` response that always closes its body iterator.

    When the client disconnects, Starlette cancels the task sending the stream; if that task was in
    ``send`` rather than in the iterator, the iterator would stay suspended (and the request keep
    running) until garbage collection. Closing it here aborts the request at once.
    """

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str]):
        super().__init__(events, headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()

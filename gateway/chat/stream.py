"""Streaming Chat Completions: ``chat.completion.chunk`` objects as server-sent events.

Event order: a chunk with ``delta.role``; one chunk per non-empty text delta (with ``full_text``, the
whole text so far, when ``fullTextEnabled``); a chunk with ``finish_reason``; with
``stream_options.include_usage`` a chunk with ``choices: []`` and the usage; then ``data: [DONE]``.
A failure after the stream has started ends it with ``data: {"error": {...}}`` (the OpenAI SDK
raises ``APIError`` on it) and then ``[DONE]``.
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator

from ..errors import APIError
from ..generation import Generation
from ..sse import DONE, Event, data_event

log = logging.getLogger(__name__)


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

    def role(self) -> Event:
        return self._chunk({"role": "assistant", "content": ""})

    def content(self, text: str) -> Event:
        self.text += text
        return self._chunk({"content": text}, **({"full_text": self.text} if self.full_text else {}))

    def finish(self, reason: str | None) -> Event:
        return self._chunk({}, finish_reason=reason)

    def usage(self, usage: dict[str, Any]) -> Event:
        return data_event({**self._head(), "choices": [], "usage": usage})

    @staticmethod
    def error(err: APIError) -> Event:
        return data_event(err.body())

    def _head(self) -> dict[str, Any]:
        return {"id": self.completion_id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model}

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> Event:
        body = {**self._head(), "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": finish_reason}]}
        if self.include_usage:
            body["usage"] = None
        return data_event({**body, **extra})


async def chat_events(generation: Generation, writer: ChunkWriter) -> AsyncIterator[Event]:
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

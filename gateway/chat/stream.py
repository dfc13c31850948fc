"""Streaming Chat Completions: ``chat.completion.chunk`` objects as server-sent events.

Event order: a chunk with ``delta.role``; one chunk per non-empty text delta (with ``full_text``, the
whole text so far, when ``fullTextEnabled``); for each tool call, one chunk with its ``index``,
``id``, ``type`` and whole name, then chunks of argument pieces only; a chunk with ``finish_reason``; with
``stream_options.include_usage`` a chunk with ``choices: []`` and the usage; then ``data: [DONE]``.
A failure after the stream has started ends it with ``data: {"error": {...}}`` (the OpenAI SDK
raises ``APIError`` on it) and then ``[DONE]``; with ``include_usage``, the usage chunk of the
tokens made so far comes just before the error (the SDK stops at the error, so not after it).
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator

from ..errors import APIError
from ..generation import Generation
from ..sse import DONE, Event, data_event
from ..tools.calls import ToolOutput
from ..tools.parser import ArgumentsDelta, CallOpened, TextDelta
from .structured import finish_fields

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

    def call_opened(self, index: int, call_id: str, name: str) -> Event:
        """A call's first delta: its id, type and whole name (sent once: the SDK concatenates)."""
        return self._chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                            "function": {"name": name, "arguments": ""}}]})

    def call_arguments(self, index: int, text: str) -> Event:
        return self._chunk({"tool_calls": [{"index": index, "function": {"arguments": text}}]})

    def finish(self, fields: dict[str, str | None]) -> Event:
        """The chunk that ends the choice: ``finish_fields``' finish_reason (and stop_reason)."""
        return self._chunk({}, choice=fields)

    def usage(self, usage: dict[str, Any]) -> Event:
        return data_event({**self._head(), "choices": [], "usage": usage})

    @staticmethod
    def error(err: APIError) -> Event:
        return data_event(err.body())

    def _head(self) -> dict[str, Any]:
        return {"id": self.completion_id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model}

    def _chunk(self, delta: dict[str, Any], *, choice: dict[str, Any] | None = None,
               **extra: Any) -> Event:
        """``choice``: the choice's finish fields (none: ``finish_reason: null``)."""
        body = {**self._head(), "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                             **(choice or {"finish_reason": None})}]}
        if self.include_usage:
            body["usage"] = None
        return data_event({**body, **extra})


async def chat_events(generation: Generation, writer: ChunkWriter, output: ToolOutput) -> AsyncIterator[Event]:
    """The SSE body of a started ``generation``; closes it however the stream ends."""
    failure: APIError | None = None
    try:
        yield writer.role()
        try:
            async for chunk in generation:
                for event in _deltas(writer, output, output.feed(chunk.text)):
                    yield event
            for event in _deltas(writer, output, output.finish()):
                yield event
            yield writer.finish(finish_fields(generation.finish_reason, output.called))
            if writer.include_usage:
                yield writer.usage(generation.usage.to_dict())
        except APIError as err:
            failure = err
        except Exception:
            log.exception("request %s: stream failed", generation.request_id)
            failure = APIError.internal()
        if failure is not None:
            if writer.include_usage:
                yield writer.usage(generation.usage.to_dict())
            yield writer.error(failure)
        yield DONE
    finally:
        await generation.aclose()


def _deltas(writer: ChunkWriter, output: ToolOutput, events: list) -> list[Event]:
    """Chunks for the parser's events (a closed call needs none)."""
    chunks = []
    for event in events:
        if isinstance(event, TextDelta):
            chunks.append(writer.content(event.text))
        elif isinstance(event, CallOpened):
            chunks.append(writer.call_opened(event.index, output.calls[event.index].id, event.name))
        elif isinstance(event, ArgumentsDelta):
            chunks.append(writer.call_arguments(event.index, event.text))
    return chunks

"""A scripted ``Backend`` for gateway tests that need no model: each test picks what it yields."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Callable

from gateway.backend import BackendUnavailable, GenerateParams, TokenChunk, TransferInfo
from services.engine import InvalidRequestError

Script = Callable[[GenerateParams], AsyncIterator[TokenChunk]]

TRANSFER = TransferInfo(prefill_worker_id="prefill-0", decode_worker_id="decode-1", prefill_pid=101,
                        decode_pid=202, kv_bytes=4096, kv_transfer_seconds=0.002, backend="gloo")


def words(*texts: str, finish: str = "stop", prompt_tokens: int = 5, delay: float = 0.0,
          transfer: TransferInfo | None = TRANSFER) -> Script:
    """One token per text; the last chunk finishes the request with totals and transfer info."""
    async def script(params: GenerateParams) -> AsyncIterator[TokenChunk]:
        for i, text in enumerate(texts):
            await asyncio.sleep(delay)
            last = i == len(texts) - 1
            yield TokenChunk([100 + i], text, time.perf_counter(), finished=last,
                             finish_reason=finish if last else None,
                             prompt_tokens=prompt_tokens if last else 0,
                             completion_tokens=len(texts) if last else 0,
                             transfer=transfer if last else None)
    return script


# What a worker's error text may hold: none of it may reach a client (errors.py).
INTERNAL_ERROR = "prefill worker pw-1a2b (pid 4242) at 10.0.0.7:50051 failed"


def leaked(text: str) -> bool:
    """Whether ``text`` carries any piece of ``INTERNAL_ERROR``."""
    return any(piece in text for piece in ("pw-1a2b", "4242", "10.0.0.7", "50051"))


def fail_after(*texts: str, error: str = INTERNAL_ERROR) -> Script:
    async def script(params: GenerateParams) -> AsyncIterator[TokenChunk]:
        for i, text in enumerate(texts):
            yield TokenChunk([100 + i], text, time.perf_counter())
        yield TokenChunk([], "", time.perf_counter(), finished=True, finish_reason="error", error=error)
    return script


def refuse(field: str, message: str) -> Script:
    async def script(params: GenerateParams) -> AsyncIterator[TokenChunk]:
        raise InvalidRequestError(field, message)
        yield  # pragma: no cover  (makes this an async generator)
    return script


def unavailable(reason: str) -> Script:
    async def script(params: GenerateParams) -> AsyncIterator[TokenChunk]:
        raise BackendUnavailable(reason)
        yield  # pragma: no cover
    return script


def explode(message: str) -> Script:
    async def script(params: GenerateParams) -> AsyncIterator[TokenChunk]:
        raise RuntimeError(message)
        yield  # pragma: no cover
    return script


def endless(delay: float = 0.05) -> Script:
    """Tokens forever (or nothing at all with ``delay=None``): only closing the stream ends it."""
    async def script(params: GenerateParams) -> AsyncIterator[TokenChunk]:
        i = 0
        while True:
            await asyncio.sleep(3600 if delay is None else delay)
            yield TokenChunk([i], "x", time.perf_counter())
            i += 1
    return script


class FakeBackend:
    """Implements ``gateway.backend.Backend``; records what the gateway asked of it."""

    model_name = "fake-model"
    max_model_len = 8192

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.script: Script = words("Hello", " world", "!")
        self.ready_result: Callable[[], object] = lambda: (True, "fake workers")
        self.prompts: list[list[dict[str, str]]] = []
        self.params: list[GenerateParams] = []
        self.closed: list[str] = []

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        self.prompts.append(messages)
        for i, m in enumerate(messages):
            if m["content"] == "REFUSE":
                raise InvalidRequestError(f"messages[{i}].content", "the template refused this")
        return [1] * sum(len(m["content"]) + 1 for m in messages)

    async def generate(self, params: GenerateParams) -> AsyncIterator[TokenChunk]:
        self.params.append(params)
        try:
            async for chunk in self.script(params):
                yield chunk
        finally:
            self.closed.append(params.request_id)

    async def ready(self) -> tuple[bool, str]:
        result = self.ready_result()
        if asyncio.iscoroutine(result):
            result = await result
        return result

"""The seam between the HTTP layer and whatever runs requests.

The HTTP layer (validation, OpenAI shapes, streaming) talks only to a ``Backend``. ``WorkerBackend``
(gateway/workers.py) routes to disaggregated prefill/decode workers over gRPC; ``LocalBackend``
runs an in-process engine (tests, and a single-process mode).

Contract of ``Backend.generate``: an async iterator of ``TokenChunk``; every chunk but the last
carries exactly one token; the last has ``finished=True`` (it may also carry the last token).
Closing the iterator early (``aclose()``, or the task being cancelled) aborts the request and frees
its KV everywhere. Request errors found before any token raise ``InvalidRequestError`` from the
first ``__anext__``, and having no worker for it raises ``BackendUnavailable``; failures after the
first token end the stream with ``finish_reason="error"``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterator, Protocol

from services.engine import LLMEngine, SamplingParams


@dataclass(frozen=True)
class GenerateParams:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    test_corrupt_kv: bool = False   # test hook, see protos/tandem/v1/worker.proto


@dataclass(frozen=True)
class TransferInfo:
    prefill_worker_id: str = ""
    decode_worker_id: str = ""
    prefill_pid: int = 0
    decode_pid: int = 0
    kv_bytes: int = 0
    kv_transfer_seconds: float = 0.0
    backend: str = ""


@dataclass(frozen=True)
class TokenChunk:
    """One step of a request as seen by the gateway; ``arrival`` is ``time.perf_counter()`` here."""

    token_ids: list[int]
    text: str
    arrival: float
    finished: bool = False
    finish_reason: str | None = None   # "stop" | "length" | "abort" | "error"
    error: str | None = None
    prompt_tokens: int = 0             # final chunk only
    completion_tokens: int = 0         # final chunk only; counts the prefill worker's first token
    transfer: TransferInfo | None = None


class BackendUnavailable(Exception):
    """No worker could take the request (none live, or the chosen one failed before any token).

    The HTTP layer answers 503 with an OpenAI-style error body.
    """


class Backend(Protocol):
    model_name: str
    max_model_len: int   # context length in tokens (prompt + output)

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` through the model's chat template (raises InvalidRequestError)."""

    def generate(self, params: GenerateParams) -> AsyncIterator[TokenChunk]: ...

    async def ready(self) -> tuple[bool, str]:
        """(ready, reason): at least one live prefill and one live decode worker are reachable."""


class LocalBackend:
    """Runs an in-process engine on a background thread (no workers, no KV handoff)."""

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self.model_name = engine.model_name
        self.max_model_len = engine.max_model_len
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._wake = threading.Event()
        threading.Thread(target=self._loop, daemon=True, name="local-engine").start()

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        return self.engine.tokenizer.apply_chat_template(messages)

    async def ready(self) -> tuple[bool, str]:
        return True, "in-process engine"

    async def generate(self, params: GenerateParams) -> AsyncIterator[TokenChunk]:
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        self._queues[params.request_id] = (loop, queue)
        try:
            self.engine.add_request(params.request_id, params.prompt_token_ids, params.sampling)
            self._wake.set()
            while True:
                out = await queue.get()
                yield TokenChunk(out.new_token_ids, out.text, time.perf_counter(), out.finished,
                                 out.finish_reason, prompt_tokens=out.prompt_tokens,
                                 completion_tokens=out.completion_tokens)
                if out.finished:
                    return
        finally:
            self._queues.pop(params.request_id, None)
            self.engine.abort(params.request_id)

    def _loop(self) -> None:
        while True:
            if not self.engine.has_unfinished():
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            for out in self.engine.step():
                entry = self._queues.get(out.request_id)
                if entry:
                    entry[0].call_soon_threadsafe(entry[1].put_nowait, out)

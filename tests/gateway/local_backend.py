"""``LocalBackend``: the HTTP layer over an in-process engine, for tests (no workers, no KV handoff).

It drives the engine with the workers' own ``EngineLoop`` (the one thread that calls ``step()``),
and bridges each request's output queue onto the event loop.
"""

from __future__ import annotations

import asyncio
import queue
import time
from typing import AsyncIterator

from gateway.backend import GenerateParams, TokenChunk
from services.engine import LLMEngine
from services.engine.loop import EngineLoop


class LocalBackend:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self.model_name = engine.model_name
        self.max_model_len = engine.max_model_len
        self.loop = EngineLoop(engine).start()

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        return self.engine.tokenizer.apply_chat_template(messages)

    async def ready(self) -> tuple[bool, str]:
        return True, "in-process engine"

    async def generate(self, params: GenerateParams) -> AsyncIterator[TokenChunk]:
        outputs = self.loop.subscribe(params.request_id)
        try:
            self.engine.add_request(params.request_id, params.prompt_token_ids, params.sampling)
            self.loop.wake()
            while True:
                out = await _get(outputs)
                yield TokenChunk(out.new_token_ids, out.text, time.perf_counter(), out.finished,
                                 out.finish_reason, prompt_tokens=out.prompt_tokens,
                                 completion_tokens=out.completion_tokens,
                                 cached_tokens=out.cached_tokens)
                if out.finished:
                    return
        finally:
            self.loop.unsubscribe(params.request_id)
            self.engine.abort(params.request_id)


async def _get(outputs: queue.Queue):
    """The next output, waiting without blocking the event loop."""
    while True:
        try:
            return outputs.get_nowait()
        except queue.Empty:
            await asyncio.sleep(0.002)

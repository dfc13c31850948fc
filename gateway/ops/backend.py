"""``MeteredBackend``: the app's ``Backend`` with every generation measured on the way through.

It sees exactly the chunks the HTTP layer turns into ``usage`` (the final chunk's
``prompt_tokens`` / ``completion_tokens``), so the gateway's token counters equal the sum of the
``usage`` fields clients got. A generation that ends without a final chunk (the client left, the
iterator was closed) counts as ``abort``; one the backend refused before any token (no worker, a
bad request) is not a generation and is counted only as an HTTP status.
"""

from __future__ import annotations

import time
from typing import AsyncIterator

from ..backend import Backend, BackendWrapper, GenerateParams, TokenChunk
from ..ratelimit import charge_tokens
from ..usage import UsageMeter
from .metrics import ARRIVAL, GatewayMetrics


class MeteredBackend(BackendWrapper):
    def __init__(self, inner: Backend, metrics: GatewayMetrics):
        super().__init__(inner)
        self.metrics = metrics

    def generate(self, params: GenerateParams) -> AsyncIterator[TokenChunk]:
        return self._metered(self.inner.generate(params), ARRIVAL.get() or time.perf_counter())

    async def _metered(self, chunks: AsyncIterator[TokenChunk], arrival: float) -> AsyncIterator[TokenChunk]:
        m, meter = self.metrics, UsageMeter(arrival)   # the same timings the client's usage has
        final: TokenChunk | None = None
        started = False
        try:
            async for chunk in chunks:
                if not started:
                    started = True
                    m.inflight.inc()
                first = meter.prefill_time is None
                meter.record(chunk)
                if first and meter.prefill_time is not None:
                    m.ttft.observe(meter.prefill_time)
                final = chunk if chunk.finished else None
                yield chunk
        finally:
            await _close(chunks)
            if started:
                m.inflight.dec()
                self._ended(final, arrival, meter.prefill_time, meter.decode_time_arr)

    def _ended(self, final: TokenChunk | None, arrival: float, ttft: float | None, gaps: list[float]) -> None:
        m = self.metrics
        reason = (final.finish_reason or "stop") if final is not None else "abort"
        m.generation_ended(reason, final.prompt_tokens if final else 0, final.completion_tokens if final else 0)
        if final is not None:
            charge_tokens(final.prompt_tokens + final.completion_tokens)
        for gap in gaps:
            m.itl.observe(gap)
        if final is not None and reason in ("stop", "length"):
            m.e2e.observe(final.arrival - arrival)
        m.recent.add(ttft, gaps, error=reason == "error")


async def _close(chunks) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()

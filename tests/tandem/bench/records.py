"""Hand-made ``RequestRecord``s for metric and report tests."""

from __future__ import annotations

from tandem.bench.record import RequestRecord


def record(sent: float, chunks: tuple[float, ...], done: float, *, index: int = 0,
           completion_tokens: int | None = None, prompt_tokens: int | None = 10,
           success: bool = True, **kw) -> RequestRecord:
    return RequestRecord(index=index, scheduled=sent, sent=sent, chunk_times=chunks, done=done,
                         success=success, completion_tokens=completion_tokens,
                         prompt_tokens=prompt_tokens, **kw)


def failed(index: int = 0, sent: float = 0.0) -> RequestRecord:
    return RequestRecord(index=index, scheduled=sent, sent=sent, chunk_times=(), done=sent + 0.1,
                         success=False, error="HTTP 503: busy", status=503)

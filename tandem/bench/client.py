"""One streamed Chat Completions request → a ``RequestRecord``.

The request is ``POST {base_url}/chat/completions`` with ``stream: true`` and
``stream_options.include_usage: true``; the body is read line by line with httpx, and every event
is timed on arrival with ``time.perf_counter()``. A failure (connection error, HTTP status other
than 200, an ``error`` event, a timeout, a stream without content) becomes a record with
``success=False`` and the reason; it never raises.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from .config import BenchConfig
from .record import RequestRecord
from .sse import DONE, SSEDecoder
from .workload import WorkloadRequest

ERROR_TEXT_LIMIT = 500


def open_http(config: BenchConfig) -> httpx.AsyncClient:
    """The run's connection pool: no cap on connections (the load decides), no proxies."""
    headers = {"authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    return httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(config.timeout_s), trust_env=False,
                             limits=httpx.Limits(max_connections=None, max_keepalive_connections=None))


class ChatClient:
    """Sends ``WorkloadRequest``s to the configured server over a shared ``httpx.AsyncClient``."""

    def __init__(self, config: BenchConfig, http: httpx.AsyncClient):
        self.config = config
        self.http = http

    def body(self, req: WorkloadRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": [{"role": "user", "content": req.prompt}],
            "max_tokens": req.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.config.temperature is not None:
            body["temperature"] = self.config.temperature
        if self.config.ignore_eos:
            body["ignore_eos"] = True
        return {**body, **self.config.extra_body}

    async def send(self, req: WorkloadRequest, *, index: int, start: float,
                   scheduled_at: float | None = None) -> RequestRecord:
        """Stream ``req``; times in the record are seconds since ``start`` (a ``perf_counter``)."""
        stream = _Stream(start)
        sent = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.timeout_s):
                await self._stream(self.body(req), stream)
        except TimeoutError:
            stream.error = f"timed out after {self.config.timeout_s:g} s"
        except (httpx.HTTPError, OSError, ValueError) as exc:
            stream.error = f"{type(exc).__name__}: {exc}"
        done = time.perf_counter()
        if stream.error is None and not stream.chunk_times:
            stream.error = "the stream carried no content"
        return RequestRecord(
            index=index, scheduled=(sent if scheduled_at is None else scheduled_at) - start,
            sent=sent - start, chunk_times=tuple(stream.chunk_times), done=done - start,
            success=stream.error is None, error=stream.error, status=stream.status,
            finish_reason=stream.finish_reason, prompt_tokens=stream.usage.get("prompt_tokens"),
            completion_tokens=stream.usage.get("completion_tokens"),
            prefill_time=stream.usage.get("prefill_time"),
            decode_time_arr=_tuple_or_none(stream.usage.get("decode_time_arr")),
            prompt_len=req.prompt_len, max_tokens=req.max_tokens)

    async def _stream(self, body: dict[str, Any], stream: "_Stream") -> None:
        async with self.http.stream("POST", self.config.url, json=body) as response:
            stream.status = response.status_code
            if response.status_code != 200:
                text = (await response.aread()).decode("utf-8", "replace")
                stream.error = f"HTTP {response.status_code}: {text[:ERROR_TEXT_LIMIT]}"
                return
            decoder = SSEDecoder()
            async for line in response.aiter_lines():
                data = decoder.feed(line)
                if data is not None and stream.on_event(data, time.perf_counter()):
                    return
            tail = decoder.flush()
            if tail is not None:
                stream.on_event(tail, time.perf_counter())


@dataclass
class _Stream:
    """What has arrived so far of one response."""

    start: float
    chunk_times: list[float] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    finish_reason: str | None = None
    status: int | None = None
    error: str | None = None

    def on_event(self, data: str, now: float) -> bool:
        """Take one event's data received at ``now``; ``True`` once the stream is over."""
        if data.strip() == DONE:
            return True
        event = json.loads(data)
        if event.get("error"):
            err = event["error"]
            self.error = str(err.get("message", err) if isinstance(err, dict) else err)[:ERROR_TEXT_LIMIT]
            return False
        for choice in event.get("choices") or ():
            if (choice.get("delta") or {}).get("content"):
                self.chunk_times.append(now - self.start)
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        if event.get("usage"):
            self.usage = event["usage"]
        return False


def _tuple_or_none(values: list[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(values)

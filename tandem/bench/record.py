"""``RequestRecord``: what the client saw of one request, the raw data every metric is computed from."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class RequestRecord:
    """One streamed request. Times are seconds on the client's ``perf_counter`` since the run's start.

    ``chunk_times`` holds the arrival of every SSE chunk that carried non-empty ``delta.content``.
    ``done`` is when the stream ended (``[DONE]``, the end of the body, or the failure).
    ``prompt_tokens``, ``completion_tokens``, ``prefill_time`` and ``decode_time_arr`` are the
    server's ``usage`` (``None`` when it sent none; the last two are Tandem extensions).
    ``prompt_len`` and ``max_tokens`` are what the workload asked for (``prompt_len`` estimated).
    """

    index: int
    scheduled: float
    sent: float
    chunk_times: tuple[float, ...]
    done: float
    success: bool
    error: str | None = None
    status: int | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prefill_time: float | None = None
    decode_time_arr: tuple[float, ...] | None = None
    prompt_len: int | None = None
    max_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["chunk_times"] = list(self.chunk_times)
        if self.decode_time_arr is not None:
            d["decode_time_arr"] = list(self.decode_time_arr)
        return d

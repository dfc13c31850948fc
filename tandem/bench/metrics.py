"""Serving metrics over ``RequestRecord``s: pure functions, the definitions of ``vllm bench serve``.

All times are measured by the client with ``time.perf_counter()``; "sent" is just before the HTTP
request is made (after any wait for a concurrency slot, so client-side queueing is not counted).
A *content chunk* is a streamed ``chat.completion.chunk`` whose ``delta.content`` is non-empty.

Per request (successful requests only):

- **TTFT** (time to first token): sent → arrival of the first content chunk.
- **E2E latency**: sent → end of the stream (the ``[DONE]`` event; vLLM stops at the event before
  it, the usage chunk, a negligible difference).
- **Output tokens**: the server's ``usage.completion_tokens``; if the server sent no usage, the
  number of content chunks.
- **Input tokens**: the server's ``usage.prompt_tokens`` (chat template included); if absent, the
  workload's estimate of the prompt text.
- **TPOT** (time per output token, excluding the first): ``(E2E − TTFT) / (output_tokens − 1)``;
  undefined for requests with one output token (they are left out of the TPOT statistics and meet
  any TPOT SLO, as in vLLM).
- **ITL** (inter-token latency): the gaps between successive content chunks of a request, so
  ``content_chunks − 1`` values per request. A chunk carrying several tokens (or a token that
  decodes to no text, such as an end-of-sequence token under ``ignore_eos``) makes one gap, so ITL
  is per chunk while TPOT is per token. Unlike vLLM, the role-only and ``finish_reason`` chunks
  (empty content) are not counted as tokens.

Aggregates:

- TTFT, TPOT and E2E statistics are over requests; ITL statistics are over all gaps of all
  requests pooled together (a long request weighs more).
- Each has mean, median (= p50), p90, p99, max and standard deviation; percentiles use numpy's
  default linear interpolation (``np.percentile(values, q)``).
- **Duration**: from the start of the run (the first arrival) to the end of the last request.
  Warm-up requests run before the start and are not counted anywhere.
- **Request throughput** = successful requests / duration.
- **Output token throughput** = sum of output tokens / duration.
- **Total token throughput** = (sum of input tokens + sum of output tokens) / duration.
- **Goodput** = successful requests meeting every given SLO (TTFT ≤ ttft, TPOT ≤ tpot,
  E2E ≤ e2e; only the SLOs given are checked) / duration.
- **Server-side view** (Tandem's usage extensions, when present): ``prefill_time`` per request
  (gateway arrival → first token) and ``decode_time_arr`` gaps pooled like ITL, but per token.

Failed requests are counted (``failed``) and excluded from every other figure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from .config import SLO
from .record import RequestRecord


def ttft(r: RequestRecord) -> float:
    return r.chunk_times[0] - r.sent


def e2e(r: RequestRecord) -> float:
    return r.done - r.sent


def itl(r: RequestRecord) -> list[float]:
    return np.diff(r.chunk_times).tolist()


def output_tokens(r: RequestRecord) -> int:
    return r.completion_tokens if r.completion_tokens is not None else len(r.chunk_times)


def input_tokens(r: RequestRecord) -> int:
    if r.prompt_tokens is not None:
        return r.prompt_tokens
    return r.prompt_len or 0


def tpot(r: RequestRecord) -> float | None:
    n = output_tokens(r)
    return (e2e(r) - ttft(r)) / (n - 1) if n > 1 else None


def meets(r: RequestRecord, slo: SLO) -> bool:
    """Whether a successful request meets every SLO given."""
    t = tpot(r)
    return ((slo.ttft is None or ttft(r) <= slo.ttft)
            and (slo.tpot is None or t is None or t <= slo.tpot)
            and (slo.e2e is None or e2e(r) <= slo.e2e))


@dataclass(frozen=True)
class LatencyStats:
    """Statistics of a latency in seconds (``to_ms`` for the report)."""

    count: int
    mean: float
    median: float
    p90: float
    p99: float
    max: float
    std: float

    @classmethod
    def of(cls, values: Iterable[float]) -> "LatencyStats | None":
        """``None`` for no values."""
        a = np.asarray(list(values), dtype=float)
        if a.size == 0:
            return None
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(int(a.size), float(a.mean()), float(p50), float(p90), float(p99), float(a.max()),
                   float(a.std()))

    def to_ms(self) -> dict[str, float]:
        return {k: (v if k == "count" else v * 1000.0) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class BenchMetrics:
    completed: int
    failed: int
    duration: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    goodput: float | None
    ttft: LatencyStats | None
    tpot: LatencyStats | None
    itl: LatencyStats | None
    e2e: LatencyStats | None
    server_prefill: LatencyStats | None
    server_decode: LatencyStats | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: counts and throughputs as they are, latencies in milliseconds (``*_ms``)."""
        d: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            if isinstance(value, LatencyStats) or (value is None and name in LATENCIES):
                d[f"{name}_ms"] = value.to_ms() if value else None
            else:
                d[name] = value
        return d


LATENCIES = ("ttft", "tpot", "itl", "e2e", "server_prefill", "server_decode")


def summarize(records: Sequence[RequestRecord], duration: float, slo: SLO = SLO()) -> BenchMetrics:
    """The aggregate metrics of a run that took ``duration`` seconds."""
    if not duration > 0:
        raise ValueError(f"duration must be > 0, got {duration}")
    ok = [r for r in records if r.success]
    total_in = sum(input_tokens(r) for r in ok)
    total_out = sum(output_tokens(r) for r in ok)
    return BenchMetrics(
        completed=len(ok), failed=len(records) - len(ok), duration=duration,
        total_input_tokens=total_in, total_output_tokens=total_out,
        request_throughput=len(ok) / duration, output_throughput=total_out / duration,
        total_token_throughput=(total_in + total_out) / duration,
        goodput=sum(meets(r, slo) for r in ok) / duration if slo.given else None,
        ttft=LatencyStats.of(ttft(r) for r in ok),
        tpot=LatencyStats.of(t for t in map(tpot, ok) if t is not None),
        itl=LatencyStats.of(gap for r in ok for gap in itl(r)),
        e2e=LatencyStats.of(e2e(r) for r in ok),
        server_prefill=LatencyStats.of(r.prefill_time for r in ok if r.prefill_time is not None),
        server_decode=LatencyStats.of(g for r in ok for g in (r.decode_time_arr or ())))

"""The gateway's Prometheus metrics, served at ``GET /metrics`` (one ``CollectorRegistry`` per app).

Names: the gateway's own prefix ``tandem_gateway_`` (units as suffixes, counters ``_total``), with
vLLM's buckets so its client-side TTFT/ITL/e2e chart next to the workers' ``tandem:`` ones.
Labels are bounded: ``route`` is the matched route template (``/v1/responses/{response_id}``; an
unmatched path is ``other``), ``status`` the HTTP status, ``operation`` a Redis command name,
``role`` a worker role, ``finished_reason`` one of stop/length/abort/error. Never a request id.

Who records what:
- ``HttpMetricsMiddleware``: every HTTP request by route and status, and its duration (to the
  last byte of a stream). It also stamps the request's arrival for the backend's timings.
- ``MeteredBackend``: every generation (one per model turn) — tokens from its final chunk (the
  same numbers the client's ``usage`` is built from), TTFT and e2e from the HTTP arrival, ITL
  between tokens — and the recent window the status page shows.
- ``gateway.ops.redis``: every Redis command's latency and errors.
- ``live_workers{role}``: read from the routing view when ``/metrics`` is scraped.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.metrics import E2E_BUCKETS, ITL_BUCKETS, TTFT_BUCKETS

from .recent import RecentWindow

PREFIX = "tandem_gateway_"
REDIS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# When the current HTTP request reached the gateway (perf_counter); tasks it starts inherit it.
ARRIVAL: contextvars.ContextVar[float | None] = contextvars.ContextVar("tandem_arrival", default=None)


@dataclass
class GatewayMetrics:
    model_name: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    recent: RecentWindow = field(default_factory=RecentWindow)

    def __post_init__(self) -> None:
        r, m = self.registry, ("model_name",)
        self.requests = Counter(PREFIX + "requests", "HTTP requests by route, method and status",
                                ("route", "method", "status"), registry=r)
        self.duration = Histogram(PREFIX + "request_duration_seconds", "HTTP request to last byte",
                                  ("route",), buckets=E2E_BUCKETS, registry=r)
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens of finished generations",
                                     m, registry=r).labels(self.model_name)
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Tokens clients received",
                                         m, registry=r).labels(self.model_name)
        self.generations = Counter(PREFIX + "generations", "Generations (model turns) by how they ended",
                                   m + ("finished_reason",), registry=r)
        for reason in ("stop", "length", "abort", "error"):   # every series from 0
            self.generations.labels(self.model_name, reason)
        self.inflight = Gauge(PREFIX + "inflight_generations", "Generations running now", m,
                              registry=r).labels(self.model_name)
        self.queued = Gauge(PREFIX + "queued_generations", "Generations waiting for a slot "
                            "(gateway/admission.py)", m, registry=r).labels(self.model_name)
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds", "HTTP arrival to first token",
                              m, buckets=TTFT_BUCKETS, registry=r).labels(self.model_name)
        self.itl = Histogram(PREFIX + "inter_token_latency_seconds", "Between tokens, as streamed",
                             m, buckets=ITL_BUCKETS, registry=r).labels(self.model_name)
        self.e2e = Histogram(PREFIX + "e2e_request_latency_seconds", "HTTP arrival to last token",
                             m, buckets=E2E_BUCKETS, registry=r).labels(self.model_name)
        self.redis_seconds = Histogram(PREFIX + "redis_operation_seconds", "One Redis command or pipeline",
                                       ("operation",), buckets=REDIS_BUCKETS, registry=r)
        self.redis_errors = Counter(PREFIX + "redis_errors", "Redis commands that failed",
                                    ("operation", "error"), registry=r)
        self.live_workers = Gauge(PREFIX + "live_workers", "Workers live in the registry", ("role",),
                                  registry=r)

    def generation_ended(self, reason: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.generations.labels(self.model_name, reason).inc()
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(completion_tokens)

    def set_live_workers(self, roles: list[str]) -> None:
        for role in ("prefill", "decode", "colocated"):
            self.live_workers.labels(role).set(roles.count(role))


class HttpMetricsMiddleware:
    """Counts every HTTP request by route template, method and status; times it to its last byte."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        ARRIVAL.set(start)
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = route_template(scope)
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.duration.labels(route).observe(time.perf_counter() - start)


def route_template(scope: Scope) -> str:
    """The path template of the route that handled ``scope`` (Starlette records it), or ``other``."""
    route = scope.get("route")
    return getattr(route, "path", None) or "other"

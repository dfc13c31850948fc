"""Operations: the gateway's Prometheus metrics, ``/metrics`` and the ``/status`` page.

    metrics.py       the metric families, the HTTP middleware, the request-arrival context
    backend.py       MeteredBackend: every generation measured as the client sees it
    redis.py         Redis clients that time every command
    recent.py        the last minute of generations, for the status page
    routes.py        GET /metrics, GET /status
    status_page.py   the HTML

``OpsState`` is what the ops routes read (set once by ``create_app``); the worker side of
observability is services/metrics.py and services/health.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .metrics import GatewayMetrics


@dataclass(frozen=True)
class OpsState:
    metrics: GatewayMetrics
    view: Any = None    # gateway.routing.RegistryView, or None (tests over a local backend)
    redis: Any = None   # a redis.asyncio client for the status page's Redis check, or None
    started: float = field(default_factory=time.monotonic)

"""Redis clients whose every command (and every pipeline) is timed and whose failures are counted.

``MeteredRedis`` is ``redis.asyncio.Redis`` plus ``metrics``: each command is observed under its
command name (``get``, ``evalsha``, ...; a blocking read such as ``XREAD ... BLOCK`` under
``xread_blocking``, since its latency is mostly waiting) and each pipeline under ``pipeline``.
Pub/sub connections are not measured. Build one with ``metered(url, metrics, **options)``.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from .metrics import GatewayMetrics


class _Timed:
    def __init__(self, metrics: GatewayMetrics | None, operation: str):
        self.metrics, self.operation = metrics, operation

    def __enter__(self) -> "_Timed":
        self.start = time.perf_counter()
        return self

    def __exit__(self, kind, error, tb) -> None:
        if self.metrics is None:
            return
        self.metrics.redis_seconds.labels(self.operation).observe(time.perf_counter() - self.start)
        if error is not None:
            self.metrics.redis_errors.labels(self.operation, type(error).__name__).inc()


def operation(args: tuple) -> str:
    name = str(args[0]).split()[0].lower() if args else "unknown"
    blocking = any(isinstance(a, (str, bytes)) and a.upper() in ("BLOCK", b"BLOCK") for a in args[1:])
    return f"{name}_blocking" if blocking else name


class MeteredPipeline(Pipeline):
    metrics: GatewayMetrics | None = None

    async def execute(self, raise_on_error: bool = True):
        with _Timed(self.metrics, "pipeline"):
            return await super().execute(raise_on_error)


class MeteredRedis(aioredis.Redis):
    metrics: GatewayMetrics | None = None

    async def execute_command(self, *args, **options):
        with _Timed(self.metrics, operation(args)):
            return await super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = MeteredPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.metrics = self.metrics
        return pipe


def metered(url: str, metrics: GatewayMetrics, **options) -> MeteredRedis:
    client = MeteredRedis.from_url(url, **options)
    client.metrics = metrics
    return client

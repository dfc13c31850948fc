"""``tandem gateway``: the FastAPI app over the worker registry and the response store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

from tandem.settings import Settings

if TYPE_CHECKING:
    import uvicorn

    from .auth import KeyRing


def build_app(settings: Settings, model: str = "") -> FastAPI:
    """The gateway app: tokenizer and model name from ``model``; workers from the registry and
    stored responses in the Redis at ``settings.redis_url`` (responses live
    ``TANDEM_RESPONSE_TTL_SECONDS``). All Redis I/O is ``redis.asyncio``; every call is bounded by
    ``TANDEM_REDIS_TIMEOUT_S`` socket timeouts and three quick retries (a connection left stale by a
    Redis restart is retried, not failed), then the request gets a 503."""
    import redis.asyncio as aioredis
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.asyncio.retry import Retry

    from services.engine.checkpoint import default_model_path, model_name_for, resolve_model_dir
    from services.engine.config import ModelConfig
    from services.engine.tokenizer import Tokenizer

    from .app import create_app
    from .backend.workers import WorkerBackend
    from .config import GatewaySettings
    from .ops import OpsState
    from .ops.metrics import GatewayMetrics
    from .ops.redis import metered
    from .ratelimit import RateLimits
    from .responses.store import ResponseStore
    from .tools.mcp import McpSettings
    from .routing import RegistryView

    model_dir = resolve_model_dir(model or None, settings.cache_dir)
    name = model_name_for(model or default_model_path())
    options = dict(socket_timeout=settings.redis_timeout_s,
                   socket_connect_timeout=settings.redis_timeout_s,
                   retry=Retry(ExponentialWithJitterBackoff(cap=0.2, base=0.01), 3))
    metrics = GatewayMetrics(name)
    registry_client = metered(settings.redis_url, metrics, **options)
    store_client = metered(settings.redis_url, metrics, **options)
    max_model_len = ModelConfig.from_json(model_dir / "config.json").max_position_embeddings
    view = RegistryView(registry_client, refresh_s=settings.registry_refresh_s,
                        stale_s=settings.registry_stale_s)
    backend = WorkerBackend(view, Tokenizer(model_dir), name, max_model_len,
                            request_timeout_s=settings.request_timeout_s,
                            worker_secret=settings.worker_secret)
    gateway_settings = GatewaySettings(
        served_model_name=name, full_text_enabled_default=settings.full_text,
        request_timeout_s=settings.request_timeout_s, ready_timeout_s=settings.ready_timeout_s,
        sse_keepalive_s=settings.sse_keepalive_s, max_body_bytes=settings.max_body_bytes,
        max_input_items=settings.max_input_items,
        max_inflight_requests=settings.max_inflight_requests,
        max_queued_requests=settings.max_queued_requests, queue_timeout_s=settings.queue_timeout_s,
        auth_ops=settings.auth_ops, debug_headers=settings.debug_headers,
        test_hooks=settings.test_hooks, mcp=McpSettings(
            McpSettings.parse_hosts(settings.mcp_allowed_hosts), settings.mcp_call_timeout_s,
            settings.mcp_response_timeout_s, settings.mcp_max_turns))
    store = ResponseStore(store_client, ttl_seconds=settings.response_ttl_seconds,
                          lease_s=settings.response_lease_s)
    ops = OpsState(metrics, view, aioredis.Redis.from_url(settings.redis_url, **options))
    return create_app(backend, gateway_settings, store, event_log_batch=settings.event_log_batch,
                      ops=ops, keys=key_ring(settings), limits=RateLimits(
                          settings.redis_url, settings.rate_limit_requests_per_minute,
                          settings.rate_limit_tokens_per_minute, timeout_s=settings.redis_timeout_s))


def server(app: FastAPI, host: str, port: int) -> uvicorn.Server:
    """uvicorn serving ``app`` (5 s graceful shutdown); a stop signal first marks the replica
    stopping, so that its stored runs cut by the shutdown record ``failed``, not ``cancelled``."""
    import uvicorn

    class GatewayServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.responses.stopping()
            super().handle_exit(sig, frame)

    return GatewayServer(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                        timeout_graceful_shutdown=5))


def key_ring(settings: Settings) -> KeyRing:
    """The API keys of ``TANDEM_API_KEYS`` and ``TANDEM_API_KEYS_FILE`` (none: open)."""
    from .auth import KeyRing, parse_env_keys

    return KeyRing(parse_env_keys(settings.api_keys), settings.api_keys_file)


def access_line(settings: Settings) -> str:
    """One line for the operator: whether the gateway asks for API keys."""
    if not settings.api_keys and settings.api_keys_file is None:
        return ("the gateway is OPEN: no API keys are configured (set TANDEM_API_KEYS or "
                "TANDEM_API_KEYS_FILE); every caller can use it and read every stored response")
    where = " and ".join(filter(None, ["TANDEM_API_KEYS" if settings.api_keys else "",
                                       str(settings.api_keys_file or "")]))
    return f"the gateway requires API keys (from {where})"

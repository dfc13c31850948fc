"""``tandem gateway``: the FastAPI app over the worker registry, served by uvicorn."""

from __future__ import annotations

from gateway.app import create_app
from gateway.config import GatewaySettings
from gateway.workers import WorkerBackend
from tandem.settings import Settings


def build_app(redis_url: str, model: str = ""):
    """The gateway app: tokenizer and model name from ``model``; workers from the registry at
    ``redis_url``, and stored responses in the same Redis (they live
    ``TANDEM_RESPONSE_TTL_SECONDS``)."""
    import redis
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.retry import Retry

    from gateway.response_store import ResponseStore

    from services.engine.checkpoint import default_model_path, model_name_for, resolve_model_dir
    from services.engine.config import ModelConfig
    from services.engine.tokenizer import Tokenizer
    from services.registry import WorkerRegistry

    settings = Settings.from_env()
    model_dir = resolve_model_dir(model or None, settings.cache_dir)
    name = model_name_for(model or default_model_path())
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    max_model_len = ModelConfig.from_json(model_dir / "config.json").max_position_embeddings
    backend = WorkerBackend(WorkerRegistry(client), Tokenizer(model_dir), name, max_model_len)
    # Every store call is bounded: 2 s socket timeouts and three quick retries, then a 503.
    store_client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2,
                                        retry=Retry(ExponentialWithJitterBackoff(cap=0.2, base=0.01), 3))
    gateway_settings = GatewaySettings(served_model_name=name,
                                       full_text_enabled_default=settings.full_text_default)
    store = ResponseStore(store_client, ttl_seconds=settings.response_ttl_seconds)
    return create_app(backend, gateway_settings, store)

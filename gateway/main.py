"""``tandem gateway``: the FastAPI app over the worker registry, served by uvicorn."""

from __future__ import annotations

from gateway.app import create_app
from gateway.config import GatewaySettings
from gateway.workers import WorkerBackend
from tandem.settings import Settings


def build_app(redis_url: str, model: str = ""):
    """The gateway app: tokenizer and model name from ``model``, workers from the registry at ``redis_url``."""
    import redis

    from services.engine.checkpoint import default_model_path, model_name_for, resolve_model_dir
    from services.engine.tokenizer import Tokenizer
    from services.registry import WorkerRegistry

    settings = Settings.from_env()
    model_dir = resolve_model_dir(model or None, settings.cache_dir)
    name = model_name_for(model or default_model_path())
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    from services.engine.config import ModelConfig

    max_model_len = ModelConfig.from_json(model_dir / "config.json").max_position_embeddings
    backend = WorkerBackend(WorkerRegistry(client), Tokenizer(model_dir), name, max_model_len)
    return create_app(backend, GatewaySettings(served_model_name=name,
                                               full_text_enabled_default=settings.full_text_default))

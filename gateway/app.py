"""The gateway's FastAPI app: Chat Completions, the model list, and health/readiness probes.

The app talks to requests' runners only through ``Backend`` (gateway/backend.py): in production a
backend that routes to prefill and decode workers, in tests and single-process mode ``LocalBackend``.
"""

from __future__ import annotations

from fastapi import FastAPI

from . import chat, health, model_list
from .backend import Backend
from .config import GatewaySettings
from .errors import install_error_handlers
from .middleware import RequestContextMiddleware
from .state import GatewayState


def create_app(backend: Backend, settings: GatewaySettings) -> FastAPI:
    app = FastAPI(title="Tandem gateway", summary="OpenAI-compatible API over disaggregated "
                  "prefill and decode workers")
    app.state.gateway = GatewayState(backend, settings)
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    app.include_router(chat.router)
    app.include_router(model_list.router)
    app.include_router(health.router)
    return app

"""The gateway's FastAPI app: Chat Completions, Responses, the model list, health/readiness probes.

The app talks to requests' runners only through ``Backend`` (gateway/backend.py): in production a
backend that routes to prefill and decode workers, in tests and single-process mode ``LocalBackend``.
Stored responses live in a ``ResponseStore`` (Redis, gateway/response_store.py) shared by every
replica; without one, the Responses API serves only ``store: false`` requests (others get 503).
"""

from __future__ import annotations

from fastapi import FastAPI

from . import chat, health, model_list, responses, responses_stored
from .backend import Backend
from .config import GatewaySettings
from .errors import install_error_handlers
from .middleware import RequestContextMiddleware
from .response_store import ResponseStore
from .state import GatewayState


def create_app(backend: Backend, settings: GatewaySettings, store: ResponseStore | None = None
               ) -> FastAPI:
    app = FastAPI(title="Tandem gateway", summary="OpenAI-compatible API over disaggregated "
                  "prefill and decode workers")
    app.state.gateway = GatewayState(backend, settings)
    app.state.responses = responses.ResponsesState.create(store)
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    app.include_router(chat.router)
    app.include_router(responses.router)
    app.include_router(responses_stored.router)
    app.include_router(model_list.router)
    app.include_router(health.router)
    return app

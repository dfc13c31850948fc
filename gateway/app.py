"""The gateway's FastAPI app: Chat Completions, Responses, the model list, health/readiness probes.

Layout (one subpackage per concern):

    app.py, main.py      this app; ``tandem gateway`` builds it over the registry and Redis
    chat/                POST /v1/chat/completions: route, request model, SSE chunks
    responses/           the Responses API: routes, request model, object, events, run, event log,
                         background, replay, conversation, store (Redis)
    backend/             the ``Backend`` seam and ``WorkerBackend`` (gRPC to the workers)
    admission.py         how many generations run and queue here (503 + Retry-After beyond)
    routing.py           worker choice over a local view of the registry
    generation.py        one request's token stream as the HTTP layer consumes it
    sse.py, errors.py, usage.py, params.py, middleware.py, disconnect.py   shared by both APIs
    openapi.py           /openapi.json as the server really behaves (errors, strict bodies)
    ops/                 /metrics (Prometheus), /status (HTML), the metered backend and Redis

The app talks to requests' runners only through ``Backend``. Stored responses live in a
``ResponseStore`` (Redis) shared by every replica; without one (``store=None``), the Responses API
serves only ``store: false`` requests (others get 503).
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import health, model_list
from .admission import Admission, AdmittedBackend
from .auth import AuthMiddleware, KeyRing
from .ratelimit import RateLimitMiddleware, RateLimits
from .backend import Backend
from .chat import route as chat
from .config import GatewaySettings
from .errors import install_error_handlers
from .middleware import BodyLimitMiddleware, RequestContextMiddleware
from .openapi import install_openapi
from .ops import OpsState
from .ops import routes as ops_routes
from .ops.backend import MeteredBackend
from .ops.metrics import GatewayMetrics, HttpMetricsMiddleware
from .responses import routes as responses, stored as stored_responses
from .responses.state import ResponsesState
from .responses.store import ResponseStore
from .state import GatewayState


def create_app(backend: Backend, settings: GatewaySettings, store: ResponseStore | None = None,
               *, event_log_batch: int = 32, ops: OpsState | None = None,
               keys: KeyRing | None = None, limits: RateLimits | None = None) -> FastAPI:
    """``ops``: metrics, registry view and Redis for /metrics and /status (default: metrics only);
    ``keys``: the API keys callers must present (default: none, the gateway is open);
    ``limits``: the per-key rate limits (default: none)."""
    app = FastAPI(title="Tandem gateway", summary="OpenAI-compatible API over disaggregated "
                  "prefill and decode workers", lifespan=_lifespan)
    ops = ops or OpsState(GatewayMetrics(backend.model_name))
    app.state.ops = ops
    admission = Admission(settings.max_inflight_requests, settings.max_queued_requests,
                          settings.queue_timeout_s)
    ops.metrics.queued.set_function(lambda: admission.waiting)
    app.state.gateway = GatewayState(MeteredBackend(AdmittedBackend(backend, admission), ops.metrics),
                                     settings)
    app.state.responses = ResponsesState.create(store or ResponseStore(None), event_log_batch)
    install_error_handlers(app)
    install_openapi(app, settings.served_model_name)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RateLimitMiddleware, limits=limits)            # runs after auth
    app.add_middleware(AuthMiddleware, keys=keys or KeyRing(), auth_ops=settings.auth_ops)
    app.add_middleware(RequestContextMiddleware)
    app.add_middleware(HttpMetricsMiddleware, metrics=ops.metrics)   # outermost: sees every status
    app.include_router(chat.router)
    app.include_router(responses.router)
    app.include_router(stored_responses.router)
    app.include_router(model_list.router)
    app.include_router(health.router)
    app.include_router(ops_routes.router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI):
    """At shutdown, the runs this replica still has record their end (gateway/responses/lease.py)."""
    yield
    await app.state.responses.stop()

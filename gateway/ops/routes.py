"""``GET /metrics`` (Prometheus text format) and ``GET /status`` (an HTML page for operators).

Both are operator endpoints: they show worker ids and addresses, which API clients never see
elsewhere, so deployments should keep them off the public path (deploy/k8s/README.md). Neither
can fail because Redis or the registry is down: ``/metrics`` keeps the last worker counts, and
``/status`` says what it could not reach. Each Redis look-up is bounded by ``LOOKUP_TIMEOUT_S``.

``GET /debug/state`` (only with ``TANDEM_TEST_HOOKS``; else 404) counts the per-request state this
process holds — asyncio tasks, background runs, leases, calls in flight per worker, channels — so
a test can check that none of it outlives its request.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import APIError
from . import OpsState, status_page

router = APIRouter(include_in_schema=False)
LOOKUP_TIMEOUT_S = 2.0


def ops_state(request: Request) -> OpsState:
    return request.app.state.ops


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    ops = ops_state(request)
    await _workers(ops)
    return Response(generate_latest(ops.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/status", response_class=HTMLResponse)
async def status(request: Request) -> HTMLResponse:
    ops = ops_state(request)
    (workers, error), redis = await asyncio.gather(_workers(ops), _redis(ops))
    page = status_page.render(ops.metrics.model_name, time.monotonic() - ops.started, workers, error,
                              ops.metrics.recent.stats(), redis)
    return HTMLResponse(page, headers={"cache-control": "no-store"})


@router.get("/debug/state")
async def debug_state(request: Request) -> JSONResponse:
    gateway, responses = request.app.state.gateway, request.app.state.responses
    if not gateway.settings.test_hooks:
        raise APIError(404, "Not found.", type="invalid_request_error", code="not_found")
    runs, spawned = responses.tasks.running
    backend = gateway.backend
    return JSONResponse({
        "asyncio_tasks": len(asyncio.all_tasks()),
        "background_runs": runs,
        "response_tasks": spawned,
        "leases": responses.leases.held,
        "calls_in_flight": dict(getattr(backend, "in_flight", {})),
        "channels": sorted(getattr(backend, "channels", ())),
    })


async def _workers(ops: OpsState) -> tuple[list, str]:
    """The live workers (and the live_workers gauge), or an error saying why there are none."""
    if ops.view is None:
        return [], "this gateway has no worker registry"
    try:
        async with asyncio.timeout(LOOKUP_TIMEOUT_S):
            workers = await ops.view.workers()
    except Exception as exc:   # a status page must render whatever is down
        return [], f"{type(exc).__name__}: {exc}"
    ops.metrics.set_live_workers([w.role for w in workers])
    return workers, ""


async def _redis(ops: OpsState) -> status_page.RedisState:
    if ops.redis is None:
        return status_page.RedisState(False, error="this gateway has no Redis")
    try:
        async with asyncio.timeout(LOOKUP_TIMEOUT_S):
            start = time.perf_counter()
            await ops.redis.ping()
            ping_ms = (time.perf_counter() - start) * 1000
            info = await ops.redis.info()
    except Exception as exc:
        return status_page.RedisState(False, error=f"{type(exc).__name__}: {exc}")
    return status_page.RedisState(True, ping_ms, str(info.get("redis_version", "")),
                                  "yes" if info.get("aof_enabled") else "no",
                                  str(info.get("used_memory_human", "")))

"""Liveness and readiness probes.

``/health`` answers 200 whenever the process can serve HTTP and touches nothing else. ``/ready``
answers 200 only while the backend says it can run requests (a live prefill and a live decode
worker), else 503 with the reason; a check that hangs or fails counts as not ready.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from .state import GatewayState, gateway_state

log = logging.getLogger(__name__)

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(state: GatewayState = Depends(gateway_state)) -> JSONResponse:
    ok, reason = await _check(state)
    return JSONResponse({"status": "ready" if ok else "not_ready", "reason": reason},
                        status_code=200 if ok else 503)


async def _check(state: GatewayState) -> tuple[bool, str]:
    timeout = state.settings.ready_timeout_s
    try:
        async with asyncio.timeout(timeout):
            ok, reason = await state.backend.ready()
        return bool(ok), reason
    except TimeoutError:
        return False, f"the backend readiness check took longer than {timeout:g} s"
    except Exception as exc:
        log.warning("readiness check failed", exc_info=True)
        return False, f"the backend readiness check failed ({type(exc).__name__})"

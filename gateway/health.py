"""Liveness and readiness probes.

``/health`` answers 200 whenever the process can serve HTTP and touches nothing else. ``/ready``
answers 200 only while the backend says it can run requests (a live prefill and a live decode
worker), else 503 with the reason; a check that hangs or fails counts as not ready.

``degraded`` in ``/ready``'s body lists what is down although the gateway can serve: ``store``
(Redis does not answer a ping within ``STORE_PING_S``: stored responses get 503) and ``registry``
(the worker registry is unreachable and routing runs from the last view, gateway/routing.py).
Neither makes ``/ready`` 503 by itself: unstored work is still served.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from .errors import APIError
from .responses.state import ResponsesState, responses_state
from .routing import RegistryView
from .state import GatewayState, gateway_state

log = logging.getLogger(__name__)

STORE_PING_S = 1.0

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request, state: GatewayState = Depends(gateway_state),
                shared: ResponsesState = Depends(responses_state)) -> JSONResponse:
    (ok, reason), store = await asyncio.gather(_check(state), _store_down(shared))
    degraded = {"store": store} if store else {}
    view = request.app.state.ops.view
    if isinstance(view, RegistryView) and (down_s := view.unreachable_for()) is not None:
        degraded["registry"] = (f"unreachable for {down_s:.1f} s; routing from the view read "
                                f"{view.age:.1f} s ago (used up to {view.stale_s:g} s)")
    return JSONResponse({"status": "ready" if ok else "not_ready", "reason": reason,
                         "degraded": degraded}, status_code=200 if ok else 503)


async def _store_down(shared: ResponsesState) -> str:
    """Why the response store is unusable, or "" if it answers."""
    try:
        async with asyncio.timeout(STORE_PING_S):
            await shared.store.ping()
        return ""
    except TimeoutError:
        return f"Redis did not answer a ping within {STORE_PING_S:g} s"
    except APIError as err:
        return err.message


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

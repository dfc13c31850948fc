"""The stored-response endpoints: retrieve (plain or streamed), delete, cancel, input items.

All of them read the ``ResponseStore`` (404 for a missing, expired or deleted response, or one of
another project than the caller's API key; 503 while Redis is unreachable), so any replica serves any response:
- retrieve with ``stream=true`` replays the event log after ``starting_after`` and follows a
  running response (replay.py);
- cancel (background responses only) sets the store's cancel flag and publishes it, which the
  replica running the response hears (background.py), and waits for it to record the end;
- input items are paginated by item id (conversation.page).
Query parameters other than the documented ones, and any ``include`` value, are refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from ..auth import project
from ..errors import APIError
from ..sse import SSEResponse
from ..state import GatewayState, gateway_state
from .conversation import page
from .events import as_sse
from .object import ACTIVE, finish
from .replay import follow
from .state import ResponsesState, responses_state
from .store import ResponseStore, fetch, fetch_items, not_found

log = logging.getLogger(__name__)

router = APIRouter()

CANCEL_WAIT_S = 5.0


@router.get("/v1/responses/{response_id}")
async def retrieve_response(response_id: str, request: Request, stream: bool = False,
                            starting_after: int | None = Query(None, ge=0),
                            include_obfuscation: bool | None = None,
                            state: GatewayState = Depends(gateway_state),
                            shared: ResponsesState = Depends(responses_state)) -> Response:
    check_query(request, {"stream", "starting_after", "include_obfuscation"})
    if include_obfuscation:
        raise APIError.invalid("Tandem never obfuscates stream events: 'include_obfuscation' can "
                               "only be false.", "include_obfuscation",
                               code="unsupported_parameter")
    response = await fetch(shared.store, response_id, project=project(request))
    if not stream:
        if starting_after is not None:
            raise APIError.invalid("'starting_after' is only allowed when 'stream' is true.",
                                   "starting_after")
        return JSONResponse(response)
    if not (response["background"] or response["status"] in ACTIVE
            or await shared.store.has_events(response_id)):
        raise APIError.invalid(f"Response '{response_id}' was created without stream or background"
                               "; it has no event stream to replay.", "stream")
    after = -1 if starting_after is None else starting_after
    events = follow(shared.store, response_id, after, idle_timeout_s=state.settings.request_timeout_s)
    return SSEResponse(as_sse(events), state.settings.sse_keepalive_s)


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request,
                          shared: ResponsesState = Depends(responses_state)) -> JSONResponse:
    check_query(request, set())
    response = await fetch(shared.store, response_id, project=project(request))
    if not await shared.store.delete(response_id):
        raise not_found(response_id, "response_id")
    if response["status"] in ACTIVE:        # stop it wherever it runs
        shared.tasks.cancel_local(response_id)
        await shared.store.request_cancel(response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(response_id: str, request: Request,
                          shared: ResponsesState = Depends(responses_state)) -> JSONResponse:
    """Cancel a background response; a finished one is returned unchanged."""
    check_query(request, set())
    store, owner = shared.store, project(request)
    response = await fetch(store, response_id, project=owner)
    if not response["background"]:
        raise APIError.invalid("Cannot cancel a synchronous response.", "response_id")
    if response["status"] in ACTIVE:
        await store.request_cancel(response_id)
        shared.tasks.cancel_local(response_id)
        response = await settled(store, response_id, owner)
    return JSONResponse(response)


async def settled(store: ResponseStore, response_id: str, owner: str) -> dict[str, Any]:
    """The response once its runner has recorded the end; if none does in time, cancel it here."""
    deadline = time.monotonic() + CANCEL_WAIT_S
    while True:
        response = await fetch(store, response_id, project=owner)
        if response["status"] not in ACTIVE:
            return response
        if time.monotonic() > deadline:      # its replica is gone: the record is ours to end
            log.warning("response %s: no runner answered the cancel; marking it cancelled",
                        response_id)
            response = finish(response, "cancelled", output=response["output"],
                              usage=response["usage"])
            await store.update(response)
            return response
        await asyncio.sleep(0.05)


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(response_id: str, request: Request, after: str | None = None,
                           limit: int = Query(20, ge=1, le=100),
                           order: Literal["asc", "desc"] = "desc",
                           shared: ResponsesState = Depends(responses_state)) -> JSONResponse:
    check_query(request, {"after", "limit", "order"})
    items = await fetch_items(shared.store, response_id, project=project(request))
    return JSONResponse(page(items, after=after, limit=limit, order=order))


def check_query(request: Request, allowed: set[str]) -> None:
    """Refuse unknown query parameters, and ``include`` values (none are supported)."""
    for name, value in request.query_params.multi_items():
        if name in ("include", "include[]"):
            raise APIError.invalid(f"'include' value '{value}' is not supported by this server.",
                                   "include", code="unsupported_parameter")
        if name not in allowed:
            raise APIError.invalid(f"Unrecognized query parameter: {name}", name,
                                   code="unknown_parameter")

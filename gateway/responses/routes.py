"""POST /v1/responses (the stored-response endpoints are in stored.py).

A request's life: FastAPI parses the body into ``ResponseCreateRequest`` (bad input → 400); the
handler checks the model, rebuilds the conversation (``previous_response_id``: the parent's items
from Redis, 404 if gone, 503 if Redis is down), builds the prompt through the chat template in a
worker thread (truncation; 400 if it cannot fit) and the sampling parameters, and then:
- background: stores the record (``queued``), starts the run in this process and answers at once
  (with ``stream``: follows the run's event log as SSE);
- otherwise: stores the record (``in_progress``), waits for the first token (a refusal or failure
  before it is an HTTP error, and the record is dropped again), then streams the events as SSE or
  collects them into the final Response. A client that goes away aborts the request; its record
  then says ``cancelled``.
A request with remote MCP tools (or answering an MCP approval request) takes the same two paths
with an ``McpRun`` (tool_loop.py), which runs several model turns and the MCP work between them.
With ``store: false`` nothing is read from or written to Redis except the parent of
``previous_response_id``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ..backend import GenerateParams
from ..config import GatewaySettings
from ..disconnect import unless_disconnected
from ..generation import Generation
from ..auth import project
from ..middleware import arrival, request_id
from ..params import (check_items, check_model, corrupt_kv_requested, debug_headers,
                      refuse_lone_surrogates, sampling_params)
from ..routing import affinity_key
from ..sse import SSEResponse
from ..state import GatewayState, gateway_state
from .conversation import ENGINE_PARAMS, chat_messages, conversation
from .event_log import EventLog
from .events import ResponseEvents, as_sse
from .models import ResponseCreateRequest
from .object import new_id, new_response
from .replay import follow
from .run import ResponseRun
from .structured import response_constraints
from .tool_loop import prepare_mcp_run
from .state import ResponsesState, responses_state

log = logging.getLogger(__name__)

router = APIRouter()


@router.post("/v1/responses")
async def create_response(body: ResponseCreateRequest, request: Request,
                          state: GatewayState = Depends(gateway_state),
                          shared: ResponsesState = Depends(responses_state)) -> Response:
    settings = state.settings
    check_model(body.model, settings.served_model_name)
    check_items(len(body.input), settings.max_input_items, "input")
    refuse_lone_surrogates(body)
    response_id = f"resp_{request_id(request)}"
    log_events = body.keep and bool(body.stream or body.background)
    event_log = EventLog(shared.store, response_id, shared.event_log_batch) if log_events else None
    if body.mcp_tools or body.approvals:
        run, items = await prepare_mcp_run(request, body, state, shared, event_log)
        return await (start_background(request, run, items, body, shared, settings) if body.background
                      else run_foreground(request, run, items, body, settings))
    sampling = sampling_params(body, max_tokens=body.max_output_tokens, engine_params=ENGINE_PARAMS)
    constraints = response_constraints(body)
    sampling = dataclasses.replace(sampling, grammar=constraints.grammar)
    items, prompt = await conversation(body, shared.store, state.backend, constraints.tools,
                                       project=project(request))
    params = GenerateParams(response_id, prompt.token_ids, sampling,
                            affinity=affinity_key(chat_messages(items, None)),
                            test_corrupt_kv=corrupt_kv_requested(request, settings.test_hooks))
    log.info("%s: %d input tokens (%d items dropped), stream=%s, background=%s, store=%s, user=%s",
             response_id, len(prompt.token_ids), prompt.dropped_items, bool(body.stream),
             bool(body.background), body.keep, body.user)
    status = "queued" if body.background else "in_progress"
    builder = ResponseEvents(new_response(response_id, body, settings.served_model_name, status),
                             new_id("msg"), lazy_message=constraints.parse_calls)
    generation = Generation(state.backend, params, arrival(request), settings.request_timeout_s,
                            ENGINE_PARAMS)
    run = ResponseRun(generation, builder, shared.store if body.keep else None, log=event_log,
                      input_tokens=len(prompt.token_ids), spawn=shared.tasks.spawn,
                      parse_calls=constraints.parse_calls, leases=shared.leases)
    if body.background:
        return await start_background(request, run, items, body, shared, settings)
    return await run_foreground(request, run, items, body, settings)


async def start_background(request: Request, run: ResponseRun, items: list[dict[str, Any]],
                           body: ResponseCreateRequest, shared: ResponsesState,
                           settings: GatewaySettings) -> Response:
    """Store the queued response, start it in this process, answer now (or follow its log)."""
    try:
        await run.create_record(items, project(request))
    except BaseException:
        await run.close_generation()
        raise
    shared.tasks.start(run)
    if body.stream:
        events = follow(shared.store, run.response_id, -1, idle_timeout_s=settings.request_timeout_s)
        return SSEResponse(as_sse(events), settings.sse_keepalive_s)
    return JSONResponse(run.response)


async def run_foreground(request: Request, run: ResponseRun, items: list[dict[str, Any]],
                         body: ResponseCreateRequest, settings: GatewaySettings) -> Response:
    """Store the record, wait for the first token, then stream the events or collect them.

    The record comes first, so that a store that is down costs no work on the workers; a request
    that fails before its first token (an HTTP error) leaves no record behind. However the
    response ends, the run is stopped (``abandon``) if it did not run to its end.
    """
    try:
        await run.create_record(items, project(request))
    except BaseException:
        await run.close_generation()
        raise
    try:
        await unless_disconnected(request, run.start())
    except BaseException:
        await run.close_generation()
        await run.discard_record()
        raise
    if body.stream:
        return SSEResponse(as_sse(run.events(to_client=True)), settings.sse_keepalive_s,
                           on_close=run.abandon)

    async def collect() -> None:
        async for _ in run.events(to_client=False):
            pass

    try:
        await unless_disconnected(request, collect())
    finally:
        await run.abandon()
    if run.error is not None:
        raise run.error
    transfer = run.generation.transfer if run.generation is not None else None
    return JSONResponse(run.response, headers=debug_headers(transfer, settings.debug_headers))

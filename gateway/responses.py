"""The Responses API: POST /v1/responses (the stored-response endpoints: responses_stored.py).

POST /v1/responses, a request's life: FastAPI parses the body into ``ResponseCreateRequest`` (bad
input → 400); the handler checks the model, rebuilds the conversation (``previous_response_id``: the
parent's items from Redis, 404 if gone, 503 if Redis is down), builds the prompt through the chat
template (truncation; 400 if it cannot fit) and the sampling parameters, and then:
- background: stores the record (``queued``), starts the run in this process and answers at once
  (with ``stream``: follows the run's event log as SSE);
- otherwise: stores the record (``in_progress``), waits for the first token (a refusal or failure
  before it is an HTTP error, and the record is dropped again), then streams the events as SSE or
  collects them into the final Response. A client that goes away aborts the request; its record
  then says ``cancelled``.
With ``store: false`` nothing is read from or written to Redis except the parent of
``previous_response_id``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from services.engine import InvalidRequestError, SamplingParams

from .backend import Backend, GenerateParams
from .chat import check_model, corrupt_kv_requested, transfer_headers
from .chat_stream import SSEResponse
from .disconnect import unless_disconnected
from .errors import APIError
from .generation import Generation
from .middleware import arrival, request_id
from .response_store import ResponseStore
from .responses_background import ResponseTasks
from .responses_conversation import (Prompt, build_prompt, continued_items,
                                     input_items)
from .responses_events import ResponseEvents, sse
from .responses_models import ResponseCreateRequest
from .responses_object import ACTIVE, new_id, new_response
from .responses_records import ResponseRecords
from .responses_replay import follow
from .responses_run import ResponseRun
from .state import GatewayState, gateway_state

log = logging.getLogger(__name__)

router = APIRouter()

# Engine field → Responses field, for refusals.
ENGINE_PARAMS = {"prompt": "input", "max_tokens": "max_output_tokens"}


@dataclass(frozen=True)
class ResponsesState:
    """What the Responses endpoints share (one per app): the store and the background tasks."""

    records: ResponseRecords
    tasks: ResponseTasks

    @classmethod
    def create(cls, store: ResponseStore | None) -> "ResponsesState":
        records = ResponseRecords(store)
        return cls(records, ResponseTasks(records))


def responses_state(request: Request) -> ResponsesState:
    """FastAPI dependency: the app's ``ResponsesState`` (set once by ``create_app``)."""
    return request.app.state.responses


# -- POST /v1/responses -----------------------------------------------------------------------------
@router.post("/v1/responses")
async def create_response(body: ResponseCreateRequest, request: Request,
                          state: GatewayState = Depends(gateway_state),
                          shared: ResponsesState = Depends(responses_state)) -> Response:
    check_model(body.model, state.settings)
    items, prompt = await conversation(body, shared.records, state.backend)
    response_id = f"resp_{request_id(request)}"
    params = GenerateParams(response_id, prompt.token_ids, sampling_params(body),
                            test_corrupt_kv=corrupt_kv_requested(request))
    log.info("%s: %d input tokens (%d items dropped), stream=%s, background=%s, store=%s, user=%s",
             response_id, len(prompt.token_ids), prompt.dropped_items, bool(body.stream),
             bool(body.background), body.keep, body.user)
    status = "queued" if body.background else "in_progress"
    builder = ResponseEvents(new_response(response_id, body, state.settings.served_model_name,
                                          status), new_id("msg"))
    generation = Generation(state.backend, params, arrival(request),
                            state.settings.request_timeout_s, ENGINE_PARAMS)
    run = ResponseRun(generation, builder, shared.records if body.keep else None,
                      log_events=bool(body.stream or body.background),
                      input_tokens=len(prompt.token_ids), spawn=shared.tasks.spawn)
    if body.background:
        return await start_background(run, items, body, shared, state)
    return await run_foreground(request, run, items, body)


async def conversation(body: ResponseCreateRequest, records: ResponseRecords, backend: Backend
                       ) -> tuple[list[dict[str, Any]], Prompt]:
    """The full input item list (history + new input) and the prompt built from it."""
    history: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        parent_id = body.previous_response_id
        parent = await records.get(parent_id, "previous_response_id")
        if parent["status"] in ACTIVE:
            raise APIError.invalid(f"Previous response '{parent_id}' is still {parent['status']}; "
                                   "wait for it to finish before continuing it.",
                                   "previous_response_id")
        history = continued_items(parent, await records.input_items(parent_id,
                                                                    "previous_response_id"))
    items = history + input_items(body.input)
    max_model_len = backend.max_model_len
    if body.max_output_tokens is not None and body.max_output_tokens >= max_model_len:
        raise APIError.invalid(f"max_output_tokens must be less than this model's context of "
                               f"{max_model_len} tokens.", "max_output_tokens")
    try:
        prompt = build_prompt(backend.chat_prompt, items, body.instructions,
                              max_output_tokens=body.max_output_tokens,
                              max_model_len=max_model_len, truncation=body.truncation or "disabled")
    except InvalidRequestError as exc:       # the chat template refused a message
        raise APIError.invalid(exc.message, "input") from None
    return items, prompt


def sampling_params(body: ResponseCreateRequest) -> SamplingParams:
    sampling = SamplingParams(
        max_tokens=body.max_output_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        seed=body.seed,
        ignore_eos=bool(body.ignore_eos),
    )
    try:
        sampling.validate()
    except InvalidRequestError as exc:
        raise APIError.from_engine(exc, ENGINE_PARAMS) from None
    return sampling


async def start_background(run: ResponseRun, items: list[dict[str, Any]],
                           body: ResponseCreateRequest, shared: ResponsesState,
                           state: GatewayState) -> Response:
    """Store the queued response, start it in this process, answer now (or follow its log)."""
    try:
        await run.create_record(items)
    except BaseException:
        await run.generation.aclose()
        raise
    shared.tasks.start(run)
    if body.stream:
        return SSEResponse(sse_events(follow(shared.records, run.response_id, -1,
                                             idle_timeout_s=state.settings.request_timeout_s)))
    return JSONResponse(run.response)


async def run_foreground(request: Request, run: ResponseRun, items: list[dict[str, Any]],
                         body: ResponseCreateRequest) -> Response:
    """Store the record, wait for the first token, then stream the events or collect them.

    The record comes first, so that a store that is down costs no work on the workers; a request
    that fails before its first token (an HTTP error) leaves no record behind.
    """
    try:
        await run.create_record(items)
    except BaseException:
        await run.generation.aclose()
        raise
    try:
        await unless_disconnected(request, run.start())
    except BaseException:
        await run.generation.aclose()
        await run.discard_record()
        raise
    if body.stream:
        return RunSSE(run)

    async def collect() -> None:
        async for _ in run.events(to_client=False):
            pass

    try:
        await unless_disconnected(request, collect())
    finally:
        await run.abandon()
    if run.error is not None:
        raise run.error
    return JSONResponse(run.response, headers=transfer_headers(run.generation.transfer))


async def sse_events(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    """Events as server-sent events; closing this closes ``events`` (and so its run)."""
    try:
        async for event in events:
            yield sse(event)
    finally:
        await events.aclose()


class RunSSE(SSEResponse):
    """The SSE response of a foreground run; it owns the run and stops it however the response
    ends, even when the client left before the body was iterated at all."""

    def __init__(self, run: ResponseRun):
        super().__init__(sse_events(run.events(to_client=True)))
        self.run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.run.abandon()

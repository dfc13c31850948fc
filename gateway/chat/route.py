"""POST /v1/chat/completions.

A request's life here: FastAPI parses the body into ``ChatCompletionRequest`` (bad input → 400,
see errors.py); the handler checks the model, turns the messages into prompt token ids through
the backend's chat template and the sampling fields into ``SamplingParams``, and starts a
``Generation``. It waits for the first token before answering, so a refusal or a failure before any
token is a proper HTTP status; then it either streams the tokens as SSE (stream.py) or collects
them into one ``chat.completion``. A client that goes away aborts the request at any point.
Rendering the chat template and tokenizing run in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from services.engine import InvalidRequestError

from ..backend import Backend, GenerateParams
from ..config import GatewaySettings
from ..disconnect import unless_disconnected
from ..errors import APIError
from ..generation import Generation
from ..middleware import arrival, request_id
from ..params import (check_context, check_items, check_model, corrupt_kv_requested, debug_headers,
                      refuse_lone_surrogates, sampling_params)
from ..routing import affinity_key
from ..sse import SSEResponse
from ..state import GatewayState, gateway_state
from ..tools.calls import ToolOutput
from .models import ChatCompletionRequest
from .stream import ChunkWriter, chat_events
from .structured import chat_constraints, finish_fields

log = logging.getLogger(__name__)

router = APIRouter()

# Engine field → Chat Completions field, for refusals (a prompt too long for the context is the
# messages' fault).
ENGINE_PARAMS = {"prompt": "messages"}


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request,
                                 state: GatewayState = Depends(gateway_state)) -> Response:
    check_model(body.model, state.settings.served_model_name)
    check_items(len(body.messages), state.settings.max_input_items, "messages")
    refuse_lone_surrogates(body)
    constraints = chat_constraints(body)
    params = await to_generate_params(body, state.backend, f"chatcmpl-{request_id(request)}",
                                      test_corrupt_kv=corrupt_kv_requested(
                                          request, state.settings.test_hooks),
                                      constraints=constraints)
    check_context(len(params.prompt_token_ids), body.token_limit, state.backend.max_model_len,
                  prompt_param="messages", tokens_param=body.token_limit_param)
    log.info("%s: %d prompt tokens, stream=%s, user=%s", params.request_id,
             len(params.prompt_token_ids), bool(body.stream), body.user)
    generation = Generation(state.backend, params, arrival(request), state.settings.request_timeout_s,
                            ENGINE_PARAMS)
    output = ToolOutput(parse=constraints.parse_calls)
    if body.stream:
        return await stream_completion(request, generation, body, state.settings, output)
    return await complete(request, generation, state.settings, output)


# -- convert ----------------------------------------------------------------------------------------
async def to_generate_params(body: ChatCompletionRequest, backend: Backend, request_id: str, *,
                             test_corrupt_kv: bool, constraints=None) -> GenerateParams:
    """The internal request; a refusal by the chat template or the sampling checks is a 400."""
    constraints = constraints or chat_constraints(body)
    sampling = sampling_params(body, max_tokens=body.token_limit, stop=tuple(body.stop or ()),
                               engine_params=ENGINE_PARAMS)
    sampling = dataclasses.replace(sampling, grammar=constraints.grammar)
    messages = constraints.template_messages(body)
    try:
        prompt = await asyncio.to_thread(backend.chat_prompt, messages)
    except InvalidRequestError as exc:
        raise APIError.from_engine(exc, ENGINE_PARAMS) from None
    return GenerateParams(request_id, prompt, sampling, affinity=affinity_key(messages),
                          test_corrupt_kv=test_corrupt_kv)


# -- stream or not ----------------------------------------------------------------------------------
async def stream_completion(request: Request, generation: Generation, body: ChatCompletionRequest,
                            settings: GatewaySettings, output: ToolOutput) -> SSEResponse:
    """Wait for the first token, then hand ``generation`` to the SSE response (which closes it)."""
    try:
        await unless_disconnected(request, generation.start())
    except BaseException:
        await generation.aclose()
        raise
    full_text = settings.full_text_enabled_default if body.full_text_enabled is None \
        else body.full_text_enabled
    writer = ChunkWriter(generation.request_id, settings.served_model_name, int(time.time()),
                         include_usage=body.include_usage, full_text=full_text)
    return SSEResponse(chat_events(generation, writer, output), settings.sse_keepalive_s)


async def complete(request: Request, generation: Generation, settings: GatewaySettings,
                   output: ToolOutput) -> JSONResponse:
    """Run ``generation`` to the end and answer with one ``chat.completion`` object."""
    async def collect() -> None:
        await generation.start()
        async for chunk in generation:
            output.feed(chunk.text)
        output.finish()

    try:
        await unless_disconnected(request, collect())
    finally:
        await generation.aclose()
    body = completion_body(generation, output, settings.served_model_name)
    return JSONResponse(body, headers=debug_headers(generation.transfer, settings.debug_headers))


def completion_body(generation: Generation, output: ToolOutput, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": output.content or None if output.called
                               else output.content, "refusal": None}
    if output.called:
        message["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}} for c in output.calls]
    return {
        "id": generation.request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     **finish_fields(generation.finish_reason, output.called)}],
        "usage": generation.usage.to_dict(),
    }

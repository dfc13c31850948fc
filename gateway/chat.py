"""POST /v1/chat/completions.

A request's life here: FastAPI parses the body into ``ChatCompletionRequest`` (bad input → 400,
see errors.py); the handler checks the model, turns the messages into prompt token ids through
the backend's chat template and the sampling fields into ``SamplingParams``, and starts a
``Generation``. It waits for the first token before answering, so a refusal or a failure before any
token is a proper HTTP status; then it either streams the tokens as SSE (chat_stream.py) or collects
them into one ``chat.completion``. A client that goes away aborts the request at any point.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from services.engine import InvalidRequestError, SamplingParams

from .backend import Backend, GenerateParams, TransferInfo
from .chat_models import ChatCompletionRequest
from .chat_stream import ChunkWriter, SSEResponse, chat_events
from .config import GatewaySettings
from .disconnect import unless_disconnected
from .errors import APIError
from .generation import Generation
from .middleware import arrival, request_id
from .state import GatewayState, gateway_state

log = logging.getLogger(__name__)

router = APIRouter()

CORRUPT_KV_HEADER = "x-tandem-test-corrupt-kv"
# Engine field → Chat Completions field, for refusals (a prompt too long for the context is the
# messages' fault).
ENGINE_PARAMS = {"prompt": "messages"}


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request,
                                 state: GatewayState = Depends(gateway_state)) -> Response:
    check_model(body.model, state.settings)
    params = to_generate_params(body, state.backend, f"chatcmpl-{request_id(request)}",
                                test_corrupt_kv=corrupt_kv_requested(request))
    log.info("%s: %d prompt tokens, stream=%s, user=%s", params.request_id,
             len(params.prompt_token_ids), bool(body.stream), body.user)
    generation = Generation(state.backend, params, arrival(request), state.settings.request_timeout_s,
                            ENGINE_PARAMS)
    if body.stream:
        return await stream_completion(request, generation, body, state.settings)
    return await complete(request, generation, state.settings)


# -- validate and convert ---------------------------------------------------------------------------
def check_model(model: str, settings: GatewaySettings) -> None:
    if model != settings.served_model_name:
        raise APIError(404, f"The model `{model}` does not exist or you do not have access to it.",
                       param="model", code="model_not_found")


def corrupt_kv_requested(request: Request) -> bool:
    """The test hook header: ``1``/``true`` sets ``GenerateParams.test_corrupt_kv``."""
    value = request.headers.get(CORRUPT_KV_HEADER, "0").strip().lower()
    if value not in ("0", "1", "true", "false"):
        raise APIError.invalid(f"Header {CORRUPT_KV_HEADER} must be 0 or 1.", CORRUPT_KV_HEADER)
    return value in ("1", "true")


def to_generate_params(body: ChatCompletionRequest, backend: Backend, request_id: str, *,
                       test_corrupt_kv: bool) -> GenerateParams:
    """The internal request; a refusal by the chat template or the sampling checks is a 400."""
    try:
        prompt = backend.chat_prompt([m.for_template() for m in body.messages])
        sampling = _sampling_params(body)
    except InvalidRequestError as exc:
        raise APIError.from_engine(exc, ENGINE_PARAMS) from None
    return GenerateParams(request_id, prompt, sampling, test_corrupt_kv=test_corrupt_kv)


def _sampling_params(body: ChatCompletionRequest) -> SamplingParams:
    sampling = SamplingParams(
        max_tokens=body.token_limit,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        seed=body.seed,
        stop=tuple(body.stop or ()),
        ignore_eos=bool(body.ignore_eos),
    )
    sampling.validate()
    return sampling


# -- stream or not ----------------------------------------------------------------------------------
async def stream_completion(request: Request, generation: Generation, body: ChatCompletionRequest,
                            settings: GatewaySettings) -> SSEResponse:
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
    return SSEResponse(chat_events(generation, writer))


async def complete(request: Request, generation: Generation, settings: GatewaySettings) -> JSONResponse:
    """Run ``generation`` to the end and answer with one ``chat.completion`` object."""
    async def collect() -> str:
        await generation.start()
        return "".join([chunk.text async for chunk in generation])

    try:
        text = await unless_disconnected(request, collect())
    finally:
        await generation.aclose()
    body = completion_body(generation, text, settings.served_model_name)
    return JSONResponse(body, headers=transfer_headers(generation.transfer))


def completion_body(generation: Generation, text: str, model: str) -> dict[str, Any]:
    return {
        "id": generation.request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": generation.finish_reason}],
        "usage": generation.usage.to_dict(),
    }


def transfer_headers(transfer: TransferInfo | None) -> dict[str, str]:
    """Where the request ran and how much KV moved (only when the backend reports a handoff)."""
    if transfer is None:
        return {}
    return {
        "x-tandem-prefill-worker": transfer.prefill_worker_id,
        "x-tandem-decode-worker": transfer.decode_worker_id,
        "x-tandem-prefill-pid": str(transfer.prefill_pid),
        "x-tandem-decode-pid": str(transfer.decode_pid),
        "x-tandem-kv-bytes": str(transfer.kv_bytes),
        "x-tandem-kv-transfer-seconds": f"{transfer.kv_transfer_seconds:.6f}",
        "x-tandem-kv-backend": transfer.backend,
    }

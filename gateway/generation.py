"""One request's token stream from the backend, as the HTTP layer consumes it.

Life of a ``Generation``: building it calls ``backend.generate`` (nothing runs until the first
``__anext__``); ``start()`` waits for the first chunk, so that refusals and failures before any
token become HTTP error statuses; iterating then yields that chunk and the rest, timing each token
(``usage``), keeping the KV transfer report, and turning a failure into an ``APIError``. Every
wait is bounded by the request's deadline.

Ownership: whoever holds the Generation last calls ``aclose()`` (idempotent). Closing the backend
iterator aborts the request and frees its KV everywhere (the ``Backend`` contract). The chat handler
owns a Generation until it hands it to a streaming response, which then owns it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Mapping

from services.engine import InvalidRequestError

from .backend import Backend, BackendUnavailable, GenerateParams, TokenChunk, TransferInfo
from .errors import APIError
from .usage import UsageMeter

log = logging.getLogger(__name__)


class Generation:
    def __init__(self, backend: Backend, params: GenerateParams, arrival: float, timeout_s: float,
                 param_names: Mapping[str, str]):
        """``param_names`` maps the engine's field names onto the request's, for refusals."""
        self.request_id = params.request_id
        self._param_names = param_names
        self.usage = UsageMeter(arrival, prompt_tokens=len(params.prompt_token_ids))
        self.final: TokenChunk | None = None
        self.transfer: TransferInfo | None = None
        self._timeout_s = timeout_s
        self._deadline = asyncio.get_running_loop().time() + timeout_s - (time.perf_counter() - arrival)
        self._first: TokenChunk | None = None
        self._chunks = backend.generate(params)

    async def start(self) -> None:
        """Wait for the first chunk; raise ``APIError`` if the request is refused or fails first."""
        self._first = await self._next()
        self._check(self._first)

    def __aiter__(self) -> "Generation":
        return self

    async def __anext__(self) -> TokenChunk:
        if self.final is not None:
            raise StopAsyncIteration
        chunk = self._first if self._first is not None else await self._next()
        self._first = None
        self.usage.record(chunk)      # a failed final chunk's counts too: usage so far
        self._check(chunk)
        self.transfer = chunk.transfer or self.transfer
        if chunk.finished:
            self.final = chunk
        return chunk

    @property
    def finish_reason(self) -> str | None:
        return self.final.finish_reason if self.final else None

    async def aclose(self) -> None:
        """Close the backend iterator (aborting the request if it is still running)."""
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()

    async def _next(self) -> TokenChunk:
        try:
            async with asyncio.timeout_at(self._deadline):
                return await anext(self._chunks)
        except TimeoutError:
            log.warning("request %s: no result within %.1f s", self.request_id, self._timeout_s)
            raise APIError(504, f"The request did not finish within {self._timeout_s:g} seconds.",
                           type="server_error", code="timeout",
                           headers={"x-should-retry": "false"}) from None
        except StopAsyncIteration:
            raise APIError.server(502, "The backend ended the request without finishing it.") from None
        except InvalidRequestError as exc:
            raise APIError.from_engine(exc, self._param_names) from None
        except BackendUnavailable as exc:
            log.warning("request %s: no worker could take it: %s", self.request_id, exc)
            raise APIError.unavailable(exc) from None

    def _check(self, chunk: TokenChunk) -> None:
        if chunk.finish_reason == "error":
            log.warning("request %s: worker failure: %s", self.request_id, chunk.error)
            raise APIError.worker_failed()
        if chunk.finish_reason == "abort":
            raise APIError.server(503, "The request was aborted by the server.", code="aborted")

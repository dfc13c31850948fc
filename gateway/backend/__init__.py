"""The seam between the HTTP layer and whatever runs requests.

The HTTP layer (validation, OpenAI shapes, streaming) talks only to a ``Backend``. ``WorkerBackend``
(gateway/backend/workers.py) routes to disaggregated prefill/decode workers over gRPC; the tests
also run the HTTP layer over an in-process engine (tests/gateway/local_backend.py).

Contract of ``Backend.generate``: an async iterator of ``TokenChunk``; every chunk but the last
carries exactly one token; the last has ``finished=True`` (it may also carry the last token).
Closing the iterator early (``aclose()``, or the task being cancelled) aborts the request and frees
its KV everywhere. Request errors found before any token raise ``InvalidRequestError`` from the
first ``__anext__``, and having no worker for it raises ``BackendUnavailable``; failures after the
first token end the stream with ``finish_reason="error"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Protocol

from services.engine import SamplingParams


@dataclass(frozen=True)
class GenerateParams:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    affinity: bytes = b""           # gateway/routing.affinity_key: prefer where the conversation ran
    test_corrupt_kv: bool = False   # test hook, see protos/tandem/v1/worker.proto


@dataclass(frozen=True)
class TransferInfo:
    prefill_worker_id: str = ""
    decode_worker_id: str = ""
    prefill_pid: int = 0
    decode_pid: int = 0
    kv_bytes: int = 0
    kv_transfer_seconds: float = 0.0
    backend: str = ""
    kv_start_token: int = 0     # prompt tokens the decode worker held already (not moved)

    def headers(self) -> dict[str, str]:
        """Where the request ran and how much KV moved, as ``x-tandem-*`` response headers."""
        return {
            "x-tandem-prefill-worker": self.prefill_worker_id,
            "x-tandem-decode-worker": self.decode_worker_id,
            "x-tandem-prefill-pid": str(self.prefill_pid),
            "x-tandem-decode-pid": str(self.decode_pid),
            "x-tandem-kv-bytes": str(self.kv_bytes),
            "x-tandem-kv-transfer-seconds": f"{self.kv_transfer_seconds:.6f}",
            "x-tandem-kv-backend": self.backend,
            "x-tandem-kv-start-token": str(self.kv_start_token),
        }


@dataclass(frozen=True)
class TokenChunk:
    """One step of a request as seen by the gateway; ``arrival`` is ``time.perf_counter()`` here."""

    token_ids: list[int]
    text: str
    arrival: float
    finished: bool = False
    finish_reason: str | None = None   # "stop" | "length" | "abort" | "error"
    error: str | None = None
    prompt_tokens: int = 0             # final chunk only
    completion_tokens: int = 0         # final chunk only; counts the prefill worker's first token
    cached_tokens: int = 0             # final chunk only; prompt tokens served from a prefix cache
    transfer: TransferInfo | None = None


class BackendUnavailable(Exception):
    """No worker could take the request (none live, or the chosen one failed before any token).

    The HTTP layer answers 503 with an OpenAI-style error body.
    """


class Backend(Protocol):
    model_name: str
    max_model_len: int   # context length in tokens (prompt + output)

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` through the model's chat template (raises InvalidRequestError).
        CPU work: async callers run it in a worker thread, off the event loop."""

    def generate(self, params: GenerateParams) -> AsyncIterator[TokenChunk]: ...

    async def ready(self) -> tuple[bool, str]:
        """(ready, reason): at least one live prefill and one live decode worker (or a colocated one)
        say SERVING on their gRPC health."""


class BackendWrapper:
    """A ``Backend`` around ``inner`` that changes ``generate`` only (admission, metering):
    everything else (model_name, max_model_len, chat_prompt, ready) reads through, so the inner
    backend stays their owner."""

    def __init__(self, inner: Backend):
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

"""``WorkerBackend``: runs requests on disaggregated workers found in the Redis registry.

Per request: the routing view picks a decode worker and a prefill worker (gateway/routing.py), this
opens the decode worker's ``Generate`` stream naming the prefill worker, and turns its
``TokenEvent``s into ``TokenChunk``s. A colocated worker (``tandem up --colocated``) gets the
request whole.

Errors: INVALID_ARGUMENT → ``InvalidRequestError`` naming the field (trailing metadata); any other
status before the first token → ``BackendUnavailable``; after it → a final chunk with
``finish_reason="error"``. A stream that ends without a finished event is an error too.
Closing the iterator cancels the gRPC call; the decode worker then aborts the request on both
workers.
"""

from __future__ import annotations

import time
from typing import AsyncIterator

import grpc

from protos.tandem.v1 import worker_pb2 as pb
from protos.tandem.v1 import worker_pb2_grpc as rpc
from services import wire
from services.engine import InvalidRequestError
from services.engine.tokenizer import Tokenizer
from services.secret import aio_interceptors

from ..routing import RegistryView
from . import BackendUnavailable, GenerateParams, TokenChunk, TransferInfo


class WorkerBackend:
    def __init__(self, view: RegistryView, tokenizer: Tokenizer, model_name: str, max_model_len: int,
                 request_timeout_s: float = 600.0, worker_secret: str = ""):
        self.view = view
        self._interceptors = aio_interceptors(worker_secret)   # every call carries the worker secret
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.request_timeout_s = request_timeout_s
        self._stubs: dict[str, rpc.DecodeServiceStub] = {}

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        return self.tokenizer.apply_chat_template(messages)

    async def ready(self) -> tuple[bool, str]:
        try:
            workers = await self.view.workers()
        except BackendUnavailable as e:  # Redis down: not ready, and say why
            return False, str(e)
        roles = {w.role for w in workers}
        missing = [r for r in ("prefill", "decode") if r not in roles]
        if missing and "colocated" not in roles:
            return False, f"no live {' or '.join(missing)} worker"
        for w in workers:
            if w.role in ("decode", "colocated") and await self._reachable(w.address):
                return True, f"{len(workers)} live workers"
        return False, "no decode worker answers"

    async def _reachable(self, address: str) -> bool:
        try:
            await self._stub(address).Status(pb.StatusRequest(), timeout=2)
            return True
        except grpc.aio.AioRpcError:
            return False

    async def generate(self, params: GenerateParams) -> AsyncIterator[TokenChunk]:
        decode, prefill = await self.view.route(params.affinity)
        call = self._stub(decode.address).Generate(pb.GenerateRequest(
            request_id=params.request_id, prompt_token_ids=params.prompt_token_ids,
            sampling=wire.sampling_to_proto(params.sampling), prefill_address=prefill.address if prefill else "",
            test_corrupt_kv=params.test_corrupt_kv), timeout=self.request_timeout_s)
        started = False
        try:
            async for event in call:
                started = True
                yield _chunk(event)
                if event.finished:
                    return
            yield TokenChunk([], "", time.perf_counter(), True, "error", error="the decode worker ended the stream early")
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                field = dict(e.trailing_metadata() or ()).get(wire.PARAM_KEY, "")
                raise InvalidRequestError(field, e.details()) from e
            if not started:
                raise BackendUnavailable(f"worker failed: {e.code().name}: {e.details()}") from e
            yield TokenChunk([], "", time.perf_counter(), True, "error", error=f"worker failed: {e.details()}")
        finally:
            call.cancel()

    def _stub(self, address: str) -> rpc.DecodeServiceStub:
        if address not in self._stubs:
            self._stubs[address] = rpc.DecodeServiceStub(
                grpc.aio.insecure_channel(address, interceptors=self._interceptors))
        return self._stubs[address]


def _chunk(event: pb.TokenEvent) -> TokenChunk:
    transfer = None
    if event.HasField("transfer"):
        t = event.transfer
        transfer = TransferInfo(t.prefill_worker_id, t.decode_worker_id, t.prefill_pid, t.decode_pid,
                                t.kv_bytes, t.kv_transfer_seconds, t.backend, t.kv_start_token)
    return TokenChunk(list(event.token_ids), event.text, time.perf_counter(), event.finished,
                      wire.FINISH_NAMES[event.finish_reason] if event.finished else None,
                      error=event.error or None, prompt_tokens=event.prompt_tokens,
                      completion_tokens=event.completion_tokens, cached_tokens=event.cached_tokens,
                      transfer=transfer)

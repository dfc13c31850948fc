"""``WorkerBackend``: runs requests on disaggregated workers found in the Redis registry.

Per request: pick the least-loaded live decode worker and prefill worker, open the decode worker's
``Generate`` stream naming the prefill worker, and turn its ``TokenEvent``s into ``TokenChunk``s.
Where no prefill/decode pair is live but a ``colocated`` worker is (``tandem up --colocated``), the
request goes to it whole.
Closing the iterator cancels the gRPC call; the decode worker then aborts the request on both
workers.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import grpc

from gateway.backend import BackendUnavailable, GenerateParams, TokenChunk, TransferInfo
from protos.tandem.v1 import worker_pb2 as pb
from protos.tandem.v1 import worker_pb2_grpc as rpc
from services import wire
from services.engine import InvalidRequestError
from services.engine.tokenizer import Tokenizer
from services.registry import WorkerRegistry, least_loaded


class WorkerBackend:
    def __init__(self, registry: WorkerRegistry, tokenizer: Tokenizer, model_name: str, max_model_len: int,
                 request_timeout_s: float = 600.0):
        self.registry = registry
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.request_timeout_s = request_timeout_s
        self._stubs: dict[str, rpc.DecodeServiceStub] = {}

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        return self.tokenizer.apply_chat_template(messages)

    async def ready(self) -> tuple[bool, str]:
        try:
            workers = await asyncio.to_thread(self.registry.live)
        except Exception as e:  # Redis down: not ready, and say why
            return False, f"registry unreachable: {e}"
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
        decode, prefill = await self._route()
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

    async def _route(self):
        """(decode worker, prefill worker), or (colocated worker, None) when no pair is live."""
        try:
            workers = await asyncio.to_thread(self.registry.live)   # one registry read per request
        except Exception as e:
            raise BackendUnavailable(f"worker registry unreachable: {e}") from e
        by_role = lambda role: least_loaded([w for w in workers if w.role == role])  # noqa: E731
        decode, prefill = by_role("decode"), by_role("prefill")
        if decode is None or prefill is None:
            colocated = by_role("colocated")
            if colocated is not None:
                return colocated, None
        if decode is None or prefill is None:
            raise BackendUnavailable(f"no live {'decode' if decode is None else 'prefill'} worker")
        return decode, prefill

    def _stub(self, address: str) -> rpc.DecodeServiceStub:
        if address not in self._stubs:
            self._stubs[address] = rpc.DecodeServiceStub(grpc.aio.insecure_channel(address))
        return self._stubs[address]


def _chunk(event: pb.TokenEvent) -> TokenChunk:
    transfer = None
    if event.HasField("transfer"):
        t = event.transfer
        transfer = TransferInfo(t.prefill_worker_id, t.decode_worker_id, t.prefill_pid, t.decode_pid,
                                t.kv_bytes, t.kv_transfer_seconds, t.backend)
    return TokenChunk(list(event.token_ids), event.text, time.perf_counter(), event.finished,
                      wire.FINISH_NAMES[event.finish_reason] if event.finished else None,
                      error=event.error or None, prompt_tokens=event.prompt_tokens,
                      completion_tokens=event.completion_tokens, transfer=transfer)

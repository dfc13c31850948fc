"""``WorkerBackend``: runs requests on disaggregated workers found in the Redis registry.

Per request: the routing view picks a decode worker and a prefill worker (gateway/routing.py), this
opens the decode worker's ``Generate`` stream naming the prefill worker, and turns its
``TokenEvent``s into ``TokenChunk``s. A colocated worker (``tandem up --colocated``) gets the
request whole.

Retry: a request whose worker fails (UNAVAILABLE, the worker marked down) before any token reached
the caller runs once more on the pair routed without that worker, with the same request id; a
second failure, or no other live worker, is ``BackendUnavailable``. Nothing is retried after the
first token.

Errors: INVALID_ARGUMENT → ``InvalidRequestError`` naming the field (trailing metadata);
RESOURCE_EXHAUSTED (a worker at capacity) before the first token → ``Overloaded`` (a 503 with
Retry-After); any other status before the first token → ``BackendUnavailable``; after it → a final chunk with
``finish_reason="error"``. A stream that ends without a finished event is an error too.
Closing the iterator cancels the gRPC call; the decode worker then aborts the request on both
workers.

Failing workers: a call that ends UNAVAILABLE marks the worker at fault down in the routing view
(the prefill worker when the decode worker says so in ``wire.FAILED_KEY``, else the decode worker).
``ready`` asks every live worker's standard gRPC health service at once (``HEALTH_TIMEOUT_S``
each); one that is not SERVING or does not answer is out of routing until it is SERVING again
(``RegistryView.set_healthy``), and the gateway is ready only while a SERVING prefill and decode worker (or colocated
one) remain.

Channels: one gRPC channel per worker address, made on first use. A channel to an address that
is no longer in the registry view is closed and forgotten (``_forget_gone``, at each ``ready``
and each request) once no call of this gateway is in flight on it; ``in_flight`` counts those
calls per address and holds no entry for an idle one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.tandem.v1 import worker_pb2 as pb
from protos.tandem.v1 import worker_pb2_grpc as rpc
from services import wire
from services.engine import InvalidRequestError
from services.engine.tokenizer import Tokenizer
from services.secret import aio_interceptors

from services.registry import WorkerInfo

from ..admission import Overloaded
from ..routing import RegistryView
from . import BackendUnavailable, GenerateParams, TokenChunk, TransferInfo

HEALTH_TIMEOUT_S = 1.0   # one worker's gRPC health check from ``ready``
READY_VIEW_AGE_S = 0.2   # ``ready`` reads the registry when its view is older (routing: 1 s)


class WorkerBackend:
    def __init__(self, view: RegistryView, tokenizer: Tokenizer, model_name: str, max_model_len: int,
                 request_timeout_s: float = 600.0, worker_secret: str = ""):
        self.view = view
        self._interceptors = aio_interceptors(worker_secret)   # every call carries the worker secret
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.request_timeout_s = request_timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.in_flight: Counter[str] = Counter()     # address -> Generate calls running on it
        self._closing: set[asyncio.Task] = set()

    @property
    def channels(self) -> set[str]:
        """The addresses this gateway holds a channel to."""
        return set(self._channels)

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        return self.tokenizer.apply_chat_template(messages)

    async def ready(self) -> tuple[bool, str]:
        try:   # a fresher view than routing's: a start is ready as soon as its workers are
            workers = await self.view.workers(max_age=READY_VIEW_AGE_S)
        except BackendUnavailable as e:  # Redis down: not ready, and say why
            return False, str(e)
        self._forget_gone(workers)
        serving = await asyncio.gather(*(self._serving(w) for w in workers))
        for worker, ok in zip(workers, serving):
            self.view.set_healthy(worker.worker_id, ok)
        roles = {w.role for w, ok in zip(workers, serving) if ok}
        missing = [r for r in ("prefill", "decode") if r not in roles]
        if missing and "colocated" not in roles:
            return False, f"no serving {' or '.join(missing)} worker ({len(workers)} live)"
        return True, f"{sum(serving)} serving workers"

    async def _serving(self, worker: WorkerInfo) -> bool:
        """Whether ``worker``'s gRPC health says SERVING within ``HEALTH_TIMEOUT_S``."""
        stub = health_pb2_grpc.HealthStub(self._channel(worker.address))
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT_S)
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def generate(self, params: GenerateParams) -> AsyncIterator[TokenChunk]:
        """Run ``params`` on a routed pair; if a worker fails (UNAVAILABLE) before the first token,
        run it once more on the pair routed without it. Never after the first token."""
        self._forget_gone(await self.view.workers())
        try:
            async with contextlib.aclosing(self._attempt(params, *await self.view.route(params.affinity))) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        except _WorkerDown as e:
            first = e
        try:
            route = await self.view.route(params.affinity)
        except BackendUnavailable:
            raise first from None
        async with contextlib.aclosing(self._attempt(params, *route)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _attempt(self, params: GenerateParams, decode: WorkerInfo,
                       prefill: WorkerInfo | None) -> AsyncIterator[TokenChunk]:
        self.in_flight[decode.address] += 1
        try:
            async with contextlib.aclosing(self._call(params, decode, prefill)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            self.in_flight[decode.address] -= 1
            if not self.in_flight[decode.address]:
                del self.in_flight[decode.address]

    async def _call(self, params: GenerateParams, decode: WorkerInfo,
                    prefill: WorkerInfo | None) -> AsyncIterator[TokenChunk]:
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
            if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and not started:
                raise Overloaded(f"a worker is at capacity: {e.details()}") from e
            blamed = e.code() == grpc.StatusCode.UNAVAILABLE and self._blame(e, decode, prefill)
            if not started:
                error = _WorkerDown if blamed else BackendUnavailable
                raise error(f"worker failed: {e.code().name}: {e.details()}") from e
            yield TokenChunk([], "", time.perf_counter(), True, "error", error=f"worker failed: {e.details()}")
        finally:
            call.cancel()

    def _blame(self, error: grpc.aio.AioRpcError, decode: WorkerInfo, prefill: WorkerInfo | None) -> bool:
        """Mark the worker at fault down; False when none was (the prefill worker was only busy)."""
        failed = dict(error.trailing_metadata() or ()).get(wire.FAILED_KEY)
        if failed is None:
            self.view.mark_down(decode.worker_id)
        elif failed == "prefill" and prefill is not None:
            self.view.mark_down(prefill.worker_id)
        else:
            return False
        return True

    def _forget_gone(self, workers: list[WorkerInfo]) -> None:
        """Close the channels to addresses no live worker has, unless a call runs on one."""
        live = {w.address for w in workers}
        for address in [a for a in self._channels if a not in live and not self.in_flight[a]]:
            task = asyncio.ensure_future(self._channels.pop(address).close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(address, interceptors=self._interceptors)
        return self._channels[address]

    def _stub(self, address: str) -> rpc.DecodeServiceStub:
        return rpc.DecodeServiceStub(self._channel(address))


class _WorkerDown(BackendUnavailable):
    """A worker failed before the first token: the request may run once more elsewhere."""


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

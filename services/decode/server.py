"""The decode worker: runs a request's prefill elsewhere, pulls its KV, and decodes it here.

In the ``colocated`` role (the baseline deployment) the same servicer prefills locally instead,
with chunked prefill mixing into the decode batches, and no KV moves.

A request's life here (``Generate``, one gRPC stream per request):
1. validate against this engine's limits (INVALID_ARGUMENT naming the field);
2. ``Prefill`` on the prefill worker the gateway chose → the first token, streamed at once;
3. reserve KV blocks for the prompt (waits while the cache is full) — the prompt's longest prefix
   in this worker's own prefix cache is reused, so a follow-up turn that lands here pulls only the
   blocks it lacks — then pull the rest of the KV over the pair and verify it (``KvPuller``); a
   failed or corrupt transfer ends the request with an error — this worker never decodes from KV
   it could not verify;
4. the engine loop decodes it with everything else (continuous batching); each token is streamed;
5. the final event carries usage (with the prefill side's ``cached_tokens``) and transfer stats
   (the gateway times tokens itself).
Cancelling the stream aborts the request here and on the prefill worker, freeing KV on both sides.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import random
import threading
import time

import grpc

from protos.tandem.v1 import worker_pb2 as pb
from protos.tandem.v1 import worker_pb2_grpc as rpc
from services import wire
from services.decode.handoff import KvPuller
from services.engine import InvalidRequestError
from services.engine.loop import EngineLoop
from services.metrics import WorkerMetrics, handoff_failure_reason
from services.transfer import KvTransferError
from services.worker import Drain, WorkerConfig, abort_invalid, worker_status

log = logging.getLogger(__name__)


class RequestFailed(Exception):
    """A failure after the stream started; becomes a final FINISH_REASON_ERROR event."""


class DecodeServicer(rpc.DecodeServiceServicer):
    def __init__(self, loop: EngineLoop, config: WorkerConfig, puller: KvPuller | None,
                 metrics: WorkerMetrics | None = None):
        """``puller`` None: a colocated worker, which prefills itself and pulls no KV."""
        self.loop = loop
        self.engine = loop.engine
        self.config = config
        self.puller = puller
        self.metrics = metrics or WorkerMetrics(self.engine.model_name, config.role, config.worker_id)
        self.drain = Drain()   # held work while draining: open Generate streams
        self._prefilling = 0   # Prefill calls this worker is waiting on (under _prefilling_lock)
        self._prefilling_lock = threading.Lock()

    def step_threads(self) -> int:
        """Torch threads for the engine's next step (``EngineLoop.threads``): all of the engine's,
        less ``config.shared_threads`` while a prefill this worker asked for runs — the prefill
        worker then computes on cores this worker shares (``tandem up``'s split on 2 cpus), and a
        decode thread on such a core makes every parallel op of the step wait for it while taking
        half the core from the prefill (docs/architecture.md "CPU split")."""
        full = self.engine.num_threads
        return max(1, full - self.config.shared_threads) if self._prefilling else full

    def Generate(self, request: pb.GenerateRequest, context: grpc.ServicerContext):
        self.drain.refuse_new(context, self.config.worker_id)
        with self.drain.hold(), self._peer(request.prefill_address):
            yield from self._generate(request, context)

    def _peer(self, address: str):
        """Keep the prefill worker's channel open while this request may call it."""
        if self.puller is None or not address:
            return contextlib.nullcontext()
        return self.puller.using(address)

    def _generate(self, request: pb.GenerateRequest, context: grpc.ServicerContext):
        rid = request.request_id
        arrival = time.perf_counter()
        params = wire.sampling_from_proto(request.sampling)
        if params.seed is None:  # both workers must draw from the same seed
            params = dataclasses.replace(params, seed=random.getrandbits(62))
        prompt = list(request.prompt_token_ids)
        try:
            self.engine.validate(prompt, params)
        except InvalidRequestError as e:
            abort_invalid(context, e)
        if self.config.role == "colocated":
            if request.prefill_address:
                abort_invalid(context, InvalidRequestError(
                    "prefill_address", "a colocated worker prefills itself; prefill_address must be empty"))
            prefill = None
        elif not request.prefill_address:
            abort_invalid(context, InvalidRequestError("prefill_address", "a decode worker needs a prefill worker"))
        else:
            prefill = self.puller.stub(request.prefill_address)
        cancelled = threading.Event()
        if not context.add_callback(cancelled.set):   # the caller left before this handler ran
            cancelled.set()
        outputs = self.loop.subscribe(rid)
        clean = False
        try:
            clean = yield from self._run(request, prompt, params, prefill, outputs, cancelled, context,
                                         arrival)
        finally:
            self.loop.unsubscribe(rid)
            self.engine.abort(rid)   # no-op when it finished; frees its blocks otherwise
            if not clean and prefill is not None:
                self._abort_prefill(prefill, rid)

    def _run(self, request, prompt, params, prefill, outputs, cancelled, context, arrival):
        """Yield the request's events; return True when it ended cleanly (nothing left to abort)."""
        if prefill is None:
            return (yield from self._run_colocated(request, prompt, params, outputs, cancelled, arrival))
        rid = request.request_id
        reply = self._prefill(request, params, prefill, context, cancelled)
        if reply is None:   # the client left while the prompt was being prefilled
            self.metrics.ended("abort")
            return False
        if reply.finished:
            yield self._final_from_prefill(reply, len(prompt))
            return True
        first = self.engine.adopt(rid, prompt, params, reply.first_token_id)
        stats = pb.TransferStats(prefill_worker_id=reply.prefill_worker_id, decode_worker_id=self.config.worker_id,
                                 prefill_pid=reply.pid, decode_pid=os.getpid())
        if first.finished:  # cannot happen while both workers run the same checks; stay correct anyway
            yield self._final(first, stats, reply.cached_tokens)
            return False    # the prefill worker still holds the KV: let the caller abort it
        yield wire.token_event(first)
        self.metrics.ttft.observe(time.perf_counter() - arrival)
        try:
            stats.kv_start_token = self._reserve(rid, cancelled)
            pulled = self.puller.pull(request.prefill_address, rid, reply.kv, stats.kv_start_token)
            self.engine.import_kv(rid, pulled.kv, stats.kv_start_token)
        except (KvTransferError, RequestFailed, ValueError) as e:
            log.warning("request %s failed in KV handoff: %s", rid, e)
            self._handoff_failed(e)
            yield pb.TokenEvent(finished=True, finish_reason=pb.FINISH_REASON_ERROR,
                                error=f"KV handoff failed: {e}", transfer=stats)
            return False
        stats.kv_bytes, stats.kv_transfer_seconds, stats.backend = pulled.nbytes, pulled.seconds, pulled.backend
        self._handoff_done(pulled, len(prompt), stats.kv_start_token)
        self.loop.wake()
        return (yield from self._stream(outputs, cancelled, stats, arrival, first_sent=True,
                                        cached_tokens=reply.cached_tokens))

    def _handoff_done(self, pulled, num_prompt_tokens: int, cached_here: int) -> None:
        """The prompt's KV is in: ``cached_here`` tokens from this worker's cache, the rest pulled."""
        self.metrics.kv_received.inc(pulled.nbytes)
        self.metrics.handoff.observe(pulled.seconds)
        self.metrics.prompt(cached_here, "local_cache_hit")
        self.metrics.prompt(num_prompt_tokens - cached_here, "external_kv_transfer")

    def _handoff_failed(self, error: Exception) -> None:
        reason = ("no_kv_blocks" if isinstance(error, RequestFailed) else
                  "verify" if isinstance(error, ValueError) else handoff_failure_reason(str(error)))
        self.metrics.handoff_failed(reason)
        self.metrics.ended("error")

    def _run_colocated(self, request, prompt, params, outputs, cancelled, arrival):
        """The colocated baseline: prefill and decode in this engine, no KV handoff."""
        self.engine.add_request(request.request_id, prompt, params)
        self.loop.wake()
        stats = pb.TransferStats(decode_worker_id=self.config.worker_id, prefill_worker_id=self.config.worker_id,
                                 prefill_pid=os.getpid(), decode_pid=os.getpid())
        return (yield from self._stream(outputs, cancelled, stats, arrival, first_sent=False))

    def _stream(self, outputs, cancelled, stats, arrival: float, first_sent: bool,
                cached_tokens: int | None = None):
        """Relay engine outputs until the request finishes (True) or the call is cancelled (False).
        ``cached_tokens``: the prefill side's count (None: this engine prefilled it)."""
        while not cancelled.is_set():
            try:
                out = outputs.get(timeout=1.0)
            except queue.Empty:
                continue
            self._count(out, arrival, first_sent)
            first_sent = True
            if out.finished:
                self.metrics.finished(out, arrival, time.perf_counter())
                yield self._final(out, stats, out.cached_tokens if cached_tokens is None else cached_tokens)
                return True
            yield wire.token_event(out)
        self.metrics.ended("abort")   # the client went away
        return False

    def _count(self, out, arrival: float, first_sent: bool) -> None:
        """Tokens sampled here; a colocated worker's first output also means its prompt is in."""
        self.metrics.generation_tokens.inc(len(out.new_token_ids))
        if not first_sent:
            self.metrics.computed_prompt(out)
            self.metrics.ttft.observe(time.perf_counter() - arrival)

    @staticmethod
    def _final(out, stats: pb.TransferStats, cached_tokens: int) -> pb.TokenEvent:
        event = wire.token_event(out)
        event.prompt_tokens, event.completion_tokens = out.prompt_tokens, out.completion_tokens
        event.cached_tokens = cached_tokens
        event.transfer.CopyFrom(stats)
        return event

    def _prefill(self, request, params, prefill, context, cancelled) -> pb.PrefillReply | None:
        """The prefill worker's reply; None if this call was cancelled meanwhile (the prefill call
        is cancelled too, which aborts the request there)."""
        with self._prefilling_lock:
            self._prefilling += 1
        try:
            call = prefill.Prefill.future(pb.PrefillRequest(
                request_id=request.request_id, prompt_token_ids=request.prompt_token_ids,
                sampling=wire.sampling_to_proto(params), test_corrupt_kv=request.test_corrupt_kv),
                timeout=self.config.request_timeout_s)
            done = threading.Event()
            call.add_done_callback(lambda _: done.set())
            while not done.wait(0.05):
                if cancelled.is_set():
                    call.cancel()
                    return None
        finally:
            with self._prefilling_lock:
                self._prefilling -= 1
        try:
            return call.result()
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                field = dict(e.trailing_metadata() or ()).get(wire.PARAM_KEY, "")
                abort_invalid(context, InvalidRequestError(field, e.details()))
            failed = "prefill" if e.code() == grpc.StatusCode.UNAVAILABLE else "none"
            context.set_trailing_metadata(((wire.FAILED_KEY, failed),))
            # a prefill worker at its held-KV cap is busy, not failing: the gateway's 503 says
            # when to come back (Retry-After)
            busy = e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED if busy else grpc.StatusCode.UNAVAILABLE,
                          f"prefill worker {request.prefill_address} failed: {e.code().name}: {e.details()}")

    def _reserve(self, rid: str, cancelled: threading.Event) -> int:
        """Wait until the prompt's blocks are allocated here; return how many leading prompt tokens
        this worker's prefix cache already holds (their KV is not pulled)."""
        deadline = time.monotonic() + self.config.request_timeout_s
        while (start := self.engine.reserve_kv(rid)) is None:
            if cancelled.is_set() or time.monotonic() > deadline:
                raise RequestFailed("no KV blocks became free on the decode worker in time")
            time.sleep(0.01)
        return start

    def _final_from_prefill(self, reply: pb.PrefillReply, prompt_tokens: int) -> pb.TokenEvent:
        return pb.TokenEvent(token_ids=[reply.first_token_id], text=reply.text, finished=True,
                             finish_reason=reply.finish_reason, prompt_tokens=prompt_tokens, completion_tokens=1,
                             cached_tokens=reply.cached_tokens,
                             transfer=pb.TransferStats(
                                 prefill_worker_id=reply.prefill_worker_id, decode_worker_id=self.config.worker_id,
                                 prefill_pid=reply.pid, decode_pid=os.getpid()))

    @staticmethod
    def _abort_prefill(prefill: rpc.PrefillServiceStub, rid: str) -> None:
        try:
            prefill.Abort(pb.AbortRequest(request_id=rid), timeout=5)
        except grpc.RpcError as e:
            log.warning("could not abort %s on the prefill worker: %s", rid, e.details())

    def Abort(self, request: pb.AbortRequest, context) -> pb.AbortReply:
        return pb.AbortReply(found=self.loop.abort(request.request_id))

    def Status(self, request, context) -> pb.WorkerStatus:
        return worker_status(self.loop, self.drain, kv_peers=self.puller.peers() if self.puller else 0)

"""The prefill worker: computes a request's first token and hands its KV to a decode worker.

A request's life here:
1. ``Prefill`` (from a decode worker) queues the prompt with ``prefill_only``; the engine batches it
   with other prompts, samples the first token, copies the prompt's KV out of its blocks and frees
   them (so the next prompts get the blocks, and a send never waits for a model step).
2. ``SendKv`` takes that KV and sends header + payload over the torch.distributed pair of the
   asking decode worker — sent or not, the KV leaves this worker then. A decode worker that holds
   the prompt's first blocks already (its prefix cache) names ``start_token``, and only the KV
   after it is sent. The prompt's blocks stay here as prefix cache, so a follow-up that shares
   them computes only its new tokens (the reply's ``cached_tokens``).
3. A held KV never asked for is freed after ``held_kv_ttl_s``; ``Abort`` frees it at once. While
   the held copies plus the KV of prompts admitted but not yet prefilled add up to
   ``max_held_kv_bytes`` or more (checked and reserved under one lock), ``Prefill`` answers RESOURCE_EXHAUSTED
   (decode workers that do not pull cannot make this worker run out of memory).
Pairs are made on demand: ``Pair`` joins a 2-rank group hosted by the decode worker's TCPStore.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time

import grpc

from protos.tandem.v1 import worker_pb2 as pb
from protos.tandem.v1 import worker_pb2_grpc as rpc
from services import wire
from services.engine import InvalidRequestError
from services.engine.loop import EngineLoop
from services.metrics import WorkerMetrics, handoff_failure_reason
from services.transfer import KvChannel, KvTransferError
from services.worker import Drain, WorkerConfig, abort_invalid, worker_status

log = logging.getLogger(__name__)


class PrefillServicer(rpc.PrefillServiceServicer):
    def __init__(self, loop: EngineLoop, config: WorkerConfig, metrics: WorkerMetrics | None = None):
        self.loop = loop
        self.engine = loop.engine
        self.config = config
        self.metrics = metrics or WorkerMetrics(self.engine.model_name, config.role, config.worker_id)
        self.channels: dict[str, KvChannel] = {}
        self._corrupt: set[str] = set()
        self._lock = threading.Lock()
        self._reserved = 0   # KV bytes of admitted prompts not yet held (guarded by _lock)
        # held work while draining: open Prefill and SendKv calls, prompt KV not yet pulled
        self.drain = Drain(also_busy=lambda: self.engine.held_kv_bytes() > 0)

    def Prefill(self, request: pb.PrefillRequest, context: grpc.ServicerContext) -> pb.PrefillReply:
        self.drain.refuse_new(context, self.config.worker_id)
        with self.drain.hold():
            nbytes = self._reserve_held(len(request.prompt_token_ids), context)
            try:
                return self._prefill(request, context)
            finally:   # by now the KV is in held_kv_bytes (or was never made)
                with self._lock:
                    self._reserved -= nbytes

    def _reserve_held(self, num_tokens: int, context: grpc.ServicerContext) -> int:
        """Atomically admit a prompt while held plus in-flight KV is under the cap; its KV size."""
        nbytes = math.prod(self.engine.kv_shape(num_tokens)) * self.engine.config.torch_dtype.itemsize
        with self._lock:
            held = self.engine.held_kv_bytes() + self._reserved
            if held < self.config.max_held_kv_bytes:
                self._reserved += nbytes
                return nbytes
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"prefill worker {self.config.worker_id} holds {held} bytes of KV that no decode "
                      f"worker has pulled yet (limit {self.config.max_held_kv_bytes}); retry later")

    def _prefill(self, request: pb.PrefillRequest, context: grpc.ServicerContext) -> pb.PrefillReply:
        rid = request.request_id
        arrival = time.perf_counter()
        outputs = self.loop.subscribe(rid)
        try:
            self.engine.add_request(rid, list(request.prompt_token_ids),
                                    wire.sampling_from_proto(request.sampling), prefill_only=True)
        except InvalidRequestError as e:
            self.loop.unsubscribe(rid)
            abort_invalid(context, e)
        replied = threading.Event()
        # A caller that leaves (cancel, deadline, dead peer) aborts the request, which hands the
        # wait below its final output: no server thread is held for a caller that is gone. One
        # that left before the callback could be registered (a busy server starts handlers late,
        # after the caller gave up) is aborted here: its KV is never held for nobody.
        if not context.add_callback(lambda: None if replied.is_set() else self.loop.abort(rid)):
            self.loop.abort(rid)
        self.loop.wake()
        try:
            out = outputs.get(timeout=_wait_s(context, self.config.request_timeout_s))
        except queue.Empty:
            self.engine.abort(rid)
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"prefill of {rid} timed out")
        finally:
            self.loop.unsubscribe(rid)
        replied.set()  # from here the held KV belongs to the SendKv/Abort/expiry path
        if out.finish_reason == "abort":
            context.abort(grpc.StatusCode.CANCELLED, f"prefill of {rid} was aborted")
        if out.finish_reason == "error":   # the engine step failed; nothing is held
            context.abort(grpc.StatusCode.UNAVAILABLE, f"prefill worker {self.config.worker_id}: {out.error}")
        if not out.new_token_ids:   # a constrained request whose grammar failed before token 1
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request {rid}: the grammar could not be used")
        self.metrics.prefilled(out, arrival, time.perf_counter())
        reply = pb.PrefillReply(first_token_id=out.new_token_ids[0], text=out.text,
                                finished=not out.kv_held, finish_reason=wire.FINISH_REASONS[out.finish_reason],
                                prefill_worker_id=self.config.worker_id, pid=os.getpid(),
                                cached_tokens=out.cached_tokens)
        if out.kv_held:
            if request.test_corrupt_kv and self.config.test_hooks:
                self._corrupt.add(rid)   # until its SendKv, Abort or expiry
            shape = self.engine.kv_shape(out.prompt_tokens)
            reply.kv.CopyFrom(pb.KvDescriptor(
                num_layers=shape[0], num_tokens=shape[2], num_kv_heads=shape[3], head_dim=shape[4],
                dtype=str(self.engine.config.torch_dtype).removeprefix("torch.")))
        return reply

    def Pair(self, request: pb.PairRequest, context: grpc.ServicerContext) -> pb.PairReply:
        try:
            channel = KvChannel.connect(request.store_host, request.store_port, request.pair_key, rank=0,
                                        device=self.engine.device, timeout_s=request.timeout_seconds,
                                        bind_host=self.config.dial_host, secret=self.config.secret)
        except KvTransferError as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"pairing failed: {e}")
        with self._lock:
            old = self.channels.pop(request.decode_worker_id, None)
            self.channels[request.decode_worker_id] = channel
        if old is not None:
            old.close()
        log.info("paired with decode worker %s (%s)", request.decode_worker_id, channel.backend)
        return pb.PairReply()

    def SendKv(self, request: pb.SendKvRequest, context: grpc.ServicerContext) -> pb.SendKvReply:
        with self.drain.hold():
            return self._send_kv(request, context)

    def _send_kv(self, request: pb.SendKvRequest, context: grpc.ServicerContext) -> pb.SendKvReply:
        rid = request.request_id
        with self._lock:
            channel = self.channels.get(request.decode_worker_id)
        if channel is None or channel.broken:
            self.engine.abort(rid)
            self.metrics.handoff_failed("not_paired")
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"not paired with {request.decode_worker_id}")
        try:
            kv = self.engine.take_held(rid)   # the KV leaves this worker now, whatever happens next
            kv = _from(kv, request.start_token)
        except (KeyError, ValueError) as e:
            self.metrics.handoff_failed("not_held" if isinstance(e, KeyError) else "refused")
            try:
                channel.refuse(rid, str(e))   # answers the peer's posted recv; the pair stays usable
            except KvTransferError:
                pass                          # the channel is broken now; the peer re-pairs
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        try:
            channel.send(rid, kv, corrupt=rid in self._corrupt, start_token=request.start_token)
        except KvTransferError as e:
            self.metrics.handoff_failed(handoff_failure_reason(str(e)))
            context.abort(grpc.StatusCode.UNAVAILABLE, f"KV send failed: {e}")
        finally:
            self._corrupt.discard(rid)
        self.metrics.kv_sent.inc(kv.nbytes)
        return pb.SendKvReply()

    def Abort(self, request: pb.AbortRequest, context) -> pb.AbortReply:
        self._corrupt.discard(request.request_id)
        return pb.AbortReply(found=self.loop.abort(request.request_id))

    def Status(self, request, context) -> pb.WorkerStatus:
        with self._lock:
            admitted = self._reserved
        return worker_status(self.loop, self.drain, admitted_kv_bytes=admitted)

    def housekeeping(self) -> None:
        for rid in self.engine.expire_held(self.config.held_kv_ttl_s):
            self._corrupt.discard(rid)
            self.metrics.handoff_failed("expired")
            log.warning("freed the KV of %s: no decode worker pulled it within %.0fs", rid,
                        self.config.held_kv_ttl_s)

    def pairs_open(self) -> int:
        with self._lock:
            return sum(not c.broken for c in self.channels.values())

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()


def _wait_s(context: grpc.ServicerContext, limit: float) -> float:
    """How long to wait for the engine: ``limit``, or less when the caller's deadline is sooner."""
    remaining = context.time_remaining()
    return limit if remaining is None else max(0.0, min(limit, remaining))


def _from(kv, start_token: int):
    """The held prompt KV from token ``start_token`` on (contiguous, ready to send)."""
    if start_token >= kv.shape[2]:
        raise ValueError(f"start_token {start_token} is not inside the {kv.shape[2]}-token prompt")
    return kv if start_token == 0 else kv[:, :, start_token:].contiguous()

"""Aborts and departed callers end waits at once (real gRPC, the tiny engine). The engine loops are
not started, so a request stays queued until something ends it: only the abort path can."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import grpc
import pytest

from protos.tandem.v1 import worker_pb2 as pb
from protos.tandem.v1 import worker_pb2_grpc as rpc
from services import wire
from services.decode.server import DecodeServicer
from services.engine import EngineConfig, LLMEngine, SamplingParams
from services.engine.loop import EngineLoop
from services.prefill.server import PrefillServicer
from services.worker import Drain, WorkerConfig, grpc_server, worker_status
from tests.services.decode.test_server import FakePuller


@pytest.fixture
def stopped_loop(tiny_model_dir, tmp_path) -> EngineLoop:
    return EngineLoop(LLMEngine(EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=1 << 20,
                                             block_size=4), tmp_path))


@contextmanager
def serving(loop: EngineLoop, role: str, puller=None):
    config = WorkerConfig(role=role, worker_id=f"{role}-test", request_timeout_s=60)
    server, port = grpc_server(config)
    if role == "prefill":
        rpc.add_PrefillServiceServicer_to_server(PrefillServicer(loop, config), server)
    else:
        rpc.add_DecodeServiceServicer_to_server(DecodeServicer(loop, config, puller), server)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    server.stop(0)


def sampling():
    return wire.sampling_to_proto(SamplingParams(max_tokens=4, temperature=0))


def wait_until(check, within: float) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, "not within the bound"
        time.sleep(0.02)
    return time.monotonic() - started


def test_abort_hands_a_waiter_a_final_output_at_once(stopped_loop):
    outputs = stopped_loop.subscribe("a1")
    stopped_loop.engine.add_request("a1", [1, 2, 3], SamplingParams(max_tokens=4))
    assert stopped_loop.abort("a1")
    out = outputs.get(timeout=1)
    assert out.finished and out.finish_reason == "abort"
    assert not stopped_loop.abort("a1")   # unknown now: no second output
    assert outputs.empty()


@pytest.mark.parametrize("leave", ["deadline", "cancel"])
def test_the_prefill_worker_lets_go_of_a_caller_that_left(stopped_loop, leave):
    with serving(stopped_loop, "prefill") as channel:
        stub = rpc.PrefillServiceStub(channel)
        req = pb.PrefillRequest(request_id="p1", prompt_token_ids=[1, 2, 3], sampling=sampling())
        call = stub.Prefill.future(req, timeout=0.5 if leave == "deadline" else 30)
        wait_until(lambda: stopped_loop.engine.has_unfinished(), within=5)
        if leave == "cancel":
            call.cancel()
        # the servicer's thread returned (it unsubscribes on its way out) and the request is gone
        wait_until(lambda: not stopped_loop._queues and not stopped_loop.engine.has_unfinished(),
                   within=1.5)


def test_a_stream_aborted_from_outside_ends_with_an_abort_event(stopped_loop):
    with serving(stopped_loop, "colocated") as channel:
        stub = rpc.DecodeServiceStub(channel)
        stream = stub.Generate(pb.GenerateRequest(request_id="g1", prompt_token_ids=[1, 2, 3],
                                                  sampling=sampling()), timeout=30)
        wait_until(lambda: stopped_loop.engine.has_unfinished(), within=5)
        started = time.monotonic()
        assert stub.Abort(pb.AbortRequest(request_id="g1"), timeout=5).found
        events = list(stream)
        assert time.monotonic() - started < 2
    assert events[-1].finished and events[-1].finish_reason == pb.FINISH_REASON_ABORT


def test_a_client_that_leaves_while_its_prompt_is_prefilled_is_aborted_on_the_prefill_worker(
        stopped_loop, tiny_model_dir, tmp_path):
    decode_loop = EngineLoop(LLMEngine(EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=1 << 20,
                                                    block_size=4), tmp_path / "decode"))
    with serving(stopped_loop, "prefill") as to_prefill:
        puller = FakePuller(rpc.PrefillServiceStub(to_prefill))
        with serving(decode_loop, "decode", puller) as to_decode:
            stream = rpc.DecodeServiceStub(to_decode).Generate(pb.GenerateRequest(
                request_id="c1", prompt_token_ids=[1, 2, 3], sampling=sampling(),
                prefill_address="prefill:1"), timeout=30)
            wait_until(lambda: stopped_loop.engine.has_unfinished(), within=5)
            stream.cancel()
            wait_until(lambda: not stopped_loop._queues and not stopped_loop.engine.has_unfinished(),
                       within=1.5)


def test_status_counts_a_prefill_call_while_it_runs_and_nothing_once_its_caller_left(stopped_loop):
    with serving(stopped_loop, "prefill") as channel:
        stub = rpc.PrefillServiceStub(channel)
        call = stub.Prefill.future(pb.PrefillRequest(request_id="s1", prompt_token_ids=[1, 2, 3],
                                                     sampling=sampling()), timeout=30)
        wait_until(lambda: stopped_loop.engine.has_unfinished(), within=5)
        during = stub.Status(pb.StatusRequest(), timeout=5)
        assert (during.calls_in_progress, during.subscribers, during.live_requests, during.num_waiting) == (1, 1, 1, 1)
        assert during.admitted_kv_bytes > 0
        call.cancel()
        wait_until(lambda: stub.Status(pb.StatusRequest(), timeout=5).calls_in_progress == 0, within=1.5)
        after = stub.Status(pb.StatusRequest(), timeout=5)
        for name in ("num_running", "num_waiting", "live_requests", "awaiting_kv", "held_kv_requests",
                     "held_kv_bytes", "admitted_kv_bytes", "subscribers", "calls_in_progress"):
            assert getattr(after, name) == 0, name
        assert after.free_blocks == after.total_blocks


def test_status_never_waits_for_a_model_step(stopped_loop):
    # the heartbeat publishes Status: a long step holding the engine lock must not delay it
    # past the registry TTL
    engine, taken, release = stopped_loop.engine, threading.Event(), threading.Event()

    def long_step():
        with engine._lock:
            taken.set()
            release.wait(10)
    threading.Thread(target=long_step, daemon=True).start()
    taken.wait(5)
    try:
        started = time.monotonic()
        status = worker_status(stopped_loop, Drain())
        assert time.monotonic() - started < 1 and status.total_blocks > 0
    finally:
        release.set()


def test_a_prompt_whose_caller_left_before_it_was_admitted_is_dropped_at_once(stopped_loop):
    # a busy prefill worker runs a handler late: the caller (and its Abort) left before the
    # prompt reached the engine, so nothing will ever come for its KV
    servicer = PrefillServicer(stopped_loop, WorkerConfig(role="prefill", worker_id="p-test",
                                                          request_timeout_s=60))
    server, port = grpc_server(servicer.config)
    rpc.add_PrefillServiceServicer_to_server(servicer, server)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with servicer._lock:   # the handler waits in its held-KV admission
                call = rpc.PrefillServiceStub(channel).Prefill.future(pb.PrefillRequest(
                    request_id="late", prompt_token_ids=[1, 2, 3], sampling=sampling()), timeout=30)
                wait_until(lambda: servicer.drain.calls == 1, within=5)
                call.cancel()
                time.sleep(1)      # the cancellation reached the server
            wait_until(lambda: servicer.drain.calls == 0, within=2)
        counts = stopped_loop.engine.request_counts()
        assert (counts.live, counts.held, stopped_loop.subscribers) == (0, 0, 0)
    finally:
        server.stop(0)

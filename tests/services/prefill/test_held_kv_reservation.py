"""The held-KV cap is atomic: prompts admitted but not yet prefilled count against it, so
concurrent callers cannot all pass the check (real gRPC, the tiny engine, its loop not started)."""

from __future__ import annotations

import time

import grpc
import pytest

from protos.tandem.v1 import worker_pb2 as pb
from protos.tandem.v1 import worker_pb2_grpc as rpc
from services import wire
from services.engine import EngineConfig, LLMEngine, SamplingParams
from services.engine.loop import EngineLoop
from services.prefill.server import PrefillServicer
from services.worker import WorkerConfig, grpc_server


def test_a_second_prompt_is_refused_while_the_first_is_still_being_prefilled(tiny_model_dir, tmp_path):
    loop = EngineLoop(LLMEngine(EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=1 << 20,
                                             block_size=4), tmp_path))
    config = WorkerConfig(role="prefill", max_held_kv_bytes=1)
    servicer = PrefillServicer(loop, config)
    server, port = grpc_server(config)
    rpc.add_PrefillServiceServicer_to_server(servicer, server)
    server.start()
    sampling = wire.sampling_to_proto(SamplingParams(max_tokens=4))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = rpc.PrefillServiceStub(channel)
        first = stub.Prefill.future(pb.PrefillRequest(request_id="h1", prompt_token_ids=[1, 2, 3],
                                                      sampling=sampling), timeout=30)
        while not loop.engine.has_unfinished():
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as e:
            stub.Prefill(pb.PrefillRequest(request_id="h2", prompt_token_ids=[1, 2], sampling=sampling),
                         timeout=5)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        first.cancel()
        deadline = time.monotonic() + 2
        while servicer._reserved:   # the cancelled prompt gave its reservation back
            assert time.monotonic() < deadline
            time.sleep(0.01)
    server.stop(0)

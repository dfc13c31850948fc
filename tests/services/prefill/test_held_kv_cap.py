"""A prefill worker refuses new prompts while too much unpulled KV waits on it (real gRPC, real model)."""

import grpc
import pytest

from protos.tandem.v1 import worker_pb2 as pb
from protos.tandem.v1 import worker_pb2_grpc as rpc
from services import wire
from services.engine import SamplingParams
from services.engine.loop import EngineLoop
from services.prefill.server import PrefillServicer
from services.worker import WorkerConfig, grpc_server

pytestmark = pytest.mark.slow


@pytest.fixture
def prefill_stub(engine):
    loop = EngineLoop(engine).start()
    # A chat prompt's KV is over 1 MiB: one held prompt puts the worker over this limit.
    config = WorkerConfig(role="prefill", max_held_kv_bytes=100 << 10)
    servicer = PrefillServicer(loop, config)
    server, port = grpc_server(config)
    rpc.add_PrefillServiceServicer_to_server(servicer, server)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield rpc.PrefillServiceStub(channel), engine
    finally:
        channel.close()
        server.stop(0)
        loop.stop()
        servicer.close()
        for rid in list(engine._handoffs):
            engine.abort(rid)


def prefill(stub, engine, rid):
    sampling = wire.sampling_to_proto(SamplingParams(max_tokens=8, temperature=0))
    return stub.Prefill(pb.PrefillRequest(request_id=rid, prompt_token_ids=engine.chat_prompt("Say hello."),
                                          sampling=sampling), timeout=60)


def nbytes(kv: pb.KvDescriptor) -> int:
    """Payload size of a float32 KV with this descriptor's shape."""
    return kv.num_layers * 2 * kv.num_tokens * kv.num_kv_heads * kv.head_dim * 4


def test_prefill_is_refused_while_held_kv_is_over_the_limit_and_served_again_once_freed(prefill_stub):
    stub, engine = prefill_stub
    first = nbytes(prefill(stub, engine, "cap-1").kv)
    assert first > 100 << 10 and engine.held_kv_bytes() == first
    with pytest.raises(grpc.RpcError) as e:
        prefill(stub, engine, "cap-2")
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "no decode worker has pulled" in e.value.details()
    assert engine.held_kv_bytes() == first          # the refused prompt left nothing behind
    assert stub.Abort(pb.AbortRequest(request_id="cap-1")).found
    assert engine.held_kv_bytes() == 0
    assert nbytes(prefill(stub, engine, "cap-3").kv) == first
    assert engine.blocks.num_free == engine.blocks.num_blocks

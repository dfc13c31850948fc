"""The decode worker's failure branches over real gRPC, on a tiny random-weight engine.

The prefill worker and the KV puller are fakes (they are not under test here); the servicer, the
engine and the gRPC status codes are real.
"""

from concurrent import futures
from contextlib import contextmanager
from types import SimpleNamespace

import grpc
import pytest
import torch

from protos.tandem.v1 import worker_pb2 as pb
from protos.tandem.v1 import worker_pb2_grpc as rpc
from services import wire
from services.decode.handoff import Pulled
from services.decode.server import DecodeServicer
from services.engine import EngineConfig, LLMEngine, SamplingParams
from services.engine.loop import EngineLoop
from services.transfer import KvTransferError
from services.worker import WorkerConfig, grpc_server


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, metadata=()):
        self._code, self._details, self._metadata = code, details, metadata

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._metadata


class FakePrefill:
    """Answers ``Prefill`` (called as a future, like a gRPC stub) with ``reply`` or raises
    ``error``; records ``Abort`` calls."""

    def __init__(self, reply: pb.PrefillReply | None = None, error: Exception | None = None):
        self.reply, self.error, self.aborted = reply, error, []
        self.Prefill = SimpleNamespace(future=self._future)

    def _future(self, request, timeout) -> futures.Future:
        done: futures.Future = futures.Future()
        if self.error:
            done.set_exception(self.error)
        else:
            done.set_result(self.reply)
        return done

    def Abort(self, request, timeout):
        self.aborted.append(request.request_id)
        return pb.AbortReply(found=True)


class FakePuller:
    """Hands out one prefill stub; ``pull`` returns ``kv`` or raises ``error``."""

    def __init__(self, prefill, kv: torch.Tensor | None = None, error: Exception | None = None):
        self.prefill, self.kv, self.error = prefill, kv, error

    def stub(self, address):
        return self.prefill

    @contextmanager
    def using(self, address):
        yield self.prefill

    def pull(self, address, request_id, kv, start_token=0):
        if self.error:
            raise self.error
        return Pulled(self.kv, self.kv.nbytes, 0.001, "gloo")


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir, tmp_path_factory) -> LLMEngine:
    config = EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=1 << 20, block_size=4)
    return LLMEngine(config, tmp_path_factory.mktemp("cache"))


@contextmanager
def decode_worker(engine: LLMEngine, puller, role: str = "decode"):
    loop = EngineLoop(engine).start()
    config = WorkerConfig(role=role, worker_id="decode-test", request_timeout_s=10)
    server, port = grpc_server(config)
    rpc.add_DecodeServiceServicer_to_server(DecodeServicer(loop, config, puller), server)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield rpc.DecodeServiceStub(channel)
    finally:
        channel.close()
        server.stop(0)
        loop.stop()


def request(engine, rid="r1", prefill_address="prefill:1", **sampling) -> pb.GenerateRequest:
    params = SamplingParams(**({"max_tokens": 4, "temperature": 0} | sampling))
    return pb.GenerateRequest(request_id=rid, prompt_token_ids=engine.chat_prompt("hi"),
                              sampling=wire.sampling_to_proto(params), prefill_address=prefill_address)


def held_reply(engine, prompt_tokens: int) -> pb.PrefillReply:
    shape = engine.kv_shape(prompt_tokens)
    return pb.PrefillReply(first_token_id=5, text="x", prefill_worker_id="prefill-test", pid=1, kv=pb.KvDescriptor(
        num_layers=shape[0], num_tokens=shape[2], num_kv_heads=shape[3], head_dim=shape[4], dtype="float32"))


def refused(stub, req) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Generate(req, timeout=30))
    return e.value


def param(error: grpc.RpcError) -> str:
    return dict(error.trailing_metadata() or ()).get(wire.PARAM_KEY)


@pytest.mark.parametrize("change, field", [({"temperature": -1.0}, "temperature"),
                                           ({"max_tokens": 10 ** 6}, "max_tokens")])
def test_an_invalid_request_is_refused_before_any_prefill_naming_its_field(tiny_engine, change, field):
    prefill = FakePrefill(error=AssertionError("must not be called"))
    with decode_worker(tiny_engine, FakePuller(prefill)) as stub:
        e = refused(stub, request(tiny_engine, **change))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and param(e) == field


def test_an_empty_prompt_is_refused_naming_the_prompt(tiny_engine):
    req = request(tiny_engine)
    del req.prompt_token_ids[:]
    with decode_worker(tiny_engine, FakePuller(FakePrefill())) as stub:
        e = refused(stub, req)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and param(e) == "prompt"


def test_a_decode_worker_needs_a_prefill_address_and_a_colocated_one_refuses_it(tiny_engine):
    with decode_worker(tiny_engine, FakePuller(FakePrefill())) as stub:
        e = refused(stub, request(tiny_engine, prefill_address=""))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and param(e) == "prefill_address"
    with decode_worker(tiny_engine, None, role="colocated") as stub:
        e = refused(stub, request(tiny_engine))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and param(e) == "prefill_address"


def test_a_prefill_refusal_of_the_request_is_passed_on_naming_its_field(tiny_engine):
    error = FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "stop strings must be non-empty",
                         ((wire.PARAM_KEY, "stop"),))
    with decode_worker(tiny_engine, FakePuller(FakePrefill(error=error))) as stub:
        e = refused(stub, request(tiny_engine))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and param(e) == "stop"
    assert "stop strings must be non-empty" in e.details()


def test_a_busy_prefill_worker_makes_the_request_resource_exhausted(tiny_engine):
    error = FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "holds too much KV")
    with decode_worker(tiny_engine, FakePuller(FakePrefill(error=error))) as stub:
        e = refused(stub, request(tiny_engine))
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED      # the gateway: 503 with Retry-After
    assert "RESOURCE_EXHAUSTED" in e.details() and "holds too much KV" in e.details()
    assert dict(e.trailing_metadata())[wire.FAILED_KEY] == "none"     # busy, not failing


def test_an_unreachable_prefill_worker_makes_the_request_unavailable(tiny_engine):
    unreachable = rpc.PrefillServiceStub(grpc.insecure_channel("127.0.0.1:1"))   # nothing listens there
    with decode_worker(tiny_engine, FakePuller(unreachable)) as stub:
        e = refused(stub, request(tiny_engine, prefill_address="127.0.0.1:1"))
    assert e.code() == grpc.StatusCode.UNAVAILABLE and "127.0.0.1:1" in e.details()
    assert dict(e.trailing_metadata())[wire.FAILED_KEY] == "prefill"  # the gateway stops routing to it
    assert tiny_engine.blocks.num_free == tiny_engine.blocks.num_blocks


def failed_handoff(engine, puller) -> list[pb.TokenEvent]:
    with decode_worker(engine, puller) as stub:
        events = list(stub.Generate(request(engine, rid="kv-1"), timeout=30))
    assert puller.prefill.aborted == ["kv-1"]                 # the prefill worker frees its held KV
    assert engine.blocks.num_free == engine.blocks.num_blocks  # and so does this worker
    assert not engine.abort("kv-1")
    return events


def test_a_failed_kv_pull_streams_the_first_token_then_ends_with_an_error(tiny_engine):
    prompt = len(tiny_engine.chat_prompt("hi"))
    puller = FakePuller(FakePrefill(held_reply(tiny_engine, prompt)), error=KvTransferError("checksum mismatch"))
    first, last = failed_handoff(tiny_engine, puller)
    assert list(first.token_ids) == [5] and not first.finished
    assert last.finished and last.finish_reason == pb.FINISH_REASON_ERROR
    assert "KV handoff failed" in last.error and "checksum mismatch" in last.error
    assert last.transfer.prefill_worker_id == "prefill-test"


def test_a_pulled_kv_of_the_wrong_length_is_never_decoded(tiny_engine):
    prompt = len(tiny_engine.chat_prompt("hi"))
    short = torch.zeros(tiny_engine.kv_shape(prompt - 1))
    _, last = failed_handoff(tiny_engine, FakePuller(FakePrefill(held_reply(tiny_engine, prompt)), kv=short))
    assert last.finish_reason == pb.FINISH_REASON_ERROR and "KV covers" in last.error

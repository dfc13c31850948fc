"""WorkerBackend's error mapping, against a real gRPC DecodeService that misbehaves on request.

The servicer below is scripted by the request's prompt (its first token id says what to do); the
registry is a real Redis. What is under test is only the gateway side: how each gRPC outcome
becomes a chunk, an ``InvalidRequestError`` or ``BackendUnavailable``, and that closing the
iterator cancels the call.
"""

import asyncio
from dataclasses import replace

import grpc
import pytest
import redis.asyncio as aioredis

from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.admission import Overloaded
from gateway.backend import BackendUnavailable, GenerateParams
from gateway.backend.workers import WorkerBackend
from gateway.routing import RegistryView
from protos.tandem.v1 import worker_pb2 as pb
from protos.tandem.v1 import worker_pb2_grpc as rpc
from services import wire
from services.engine import InvalidRequestError, SamplingParams
from services.registry import WorkerRegistry
from tandem.redis_server import EmbeddedRedis
from tests.services.test_registry import worker

pytestmark = pytest.mark.anyio
OK, INVALID, UNAVAILABLE_FIRST, FAIL_AFTER_ONE, END_EARLY, HANG, PREFILL_DOWN, DOWN_ONCE = range(8)
BUSY = 8   # RESOURCE_EXHAUSTED: a worker at capacity


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Scripted(rpc.DecodeServiceServicer):
    def __init__(self):
        self.cancelled = asyncio.Event()
        self.calls = 0

    async def Generate(self, request, context):
        what = request.prompt_token_ids[0]
        self.calls += 1
        if what == DOWN_ONCE and self.calls == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the decode worker died")
        if what == INVALID:
            context.set_trailing_metadata(((wire.PARAM_KEY, "max_tokens"),))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "max_tokens too large")
        if what == UNAVAILABLE_FIRST:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the decode worker is failing")
        if what == BUSY:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "prefill worker holds too much KV")
        if what == PREFILL_DOWN:
            context.set_trailing_metadata(((wire.FAILED_KEY, "prefill"),))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "prefill worker unreachable")
        yield pb.TokenEvent(token_ids=[7], text="a")
        if what == FAIL_AFTER_ONE:
            await context.abort(grpc.StatusCode.INTERNAL, "KV checksum mismatch")
        if what == END_EARLY:
            return
        if what == HANG:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        yield pb.TokenEvent(token_ids=[8], text="b", finished=True,
                            finish_reason=pb.FINISH_REASON_STOP, prompt_tokens=1, completion_tokens=2)

    async def Status(self, request, context):
        return pb.WorkerStatus(pid=1)


@pytest.fixture
async def backend(tmp_path):
    server = grpc.aio.server()
    servicer = Scripted()
    rpc.add_DecodeServiceServicer_to_server(servicer, server)
    servicer.health = health.HealthServicer()     # one health service answers for both workers
    health_pb2_grpc.add_HealthServicer_to_server(servicer.health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    with EmbeddedRedis(tmp_path / "redis") as redis_server:
        servicer.registry = WorkerRegistry(redis_server.client())
        servicer.registry.publish(replace(worker("d0"), address=f"127.0.0.1:{port}"))
        servicer.registry.publish(replace(worker("p0", role="prefill"), address=f"127.0.0.1:{port}"))
        view = RegistryView(aioredis.Redis.from_url(redis_server.url, socket_timeout=1))
        yield WorkerBackend(view, tokenizer=None, model_name="m", max_model_len=100,
                            request_timeout_s=5), servicer
    await server.stop(0)


def params(what: int) -> GenerateParams:
    return GenerateParams("req-1", [what], SamplingParams(max_tokens=4))


async def collect(backend, what):
    return [chunk async for chunk in backend.generate(params(what))]


async def test_a_normal_stream_becomes_chunks(backend):
    chunks = await collect(backend[0], OK)
    assert [c.text for c in chunks] == ["a", "b"] and chunks[-1].finish_reason == "stop"
    assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (1, 2)
    assert await backend[0].ready() == (True, "2 serving workers")


async def test_invalid_argument_is_a_refusal_naming_the_field(backend):
    with pytest.raises(InvalidRequestError) as e:
        await collect(backend[0], INVALID)
    assert e.value.field == "max_tokens" and "too large" in e.value.message


async def test_a_failure_before_the_first_token_is_backend_unavailable(backend):
    with pytest.raises(BackendUnavailable, match="UNAVAILABLE"):
        await collect(backend[0], UNAVAILABLE_FIRST)


async def test_a_failure_after_the_first_token_ends_the_stream_with_an_error(backend):
    chunks = await collect(backend[0], FAIL_AFTER_ONE)
    assert [c.text for c in chunks] == ["a", ""]
    assert chunks[-1].finished and chunks[-1].finish_reason == "error"
    assert "checksum" in chunks[-1].error


async def test_a_stream_that_ends_without_finishing_is_an_error(backend):
    chunks = await collect(backend[0], END_EARLY)
    assert chunks[-1].finish_reason == "error" and "ended the stream early" in chunks[-1].error


async def test_closing_the_iterator_cancels_the_call(backend):
    stream = backend[0].generate(params(HANG))
    assert (await anext(stream)).text == "a"
    await stream.aclose()
    await asyncio.wait_for(backend[1].cancelled.wait(), 5)


async def test_ready_and_routing_follow_the_workers_grpc_health(backend):
    b, servicer = backend
    servicer.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert await b.ready() == (False, "no serving prefill or decode worker (2 live)")
    with pytest.raises(BackendUnavailable, match="no live decode"):
        await b.view.route()
    servicer.health.set("", health_pb2.HealthCheckResponse.SERVING)
    assert (await b.ready())[0] and (await b.view.route())[0].worker_id == "d0"


async def test_a_worker_that_does_not_answer_is_not_ready(backend):
    b, servicer = backend
    servicer.registry.publish(worker("p0", role="prefill"))    # now at an address nobody serves
    await asyncio.sleep(b.view.refresh_s)
    start = asyncio.get_running_loop().time()
    assert await b.ready() == (False, "no serving prefill worker (2 live)")
    assert asyncio.get_running_loop().time() - start < 1.5
    with pytest.raises(BackendUnavailable, match="no live prefill"):
        await b.view.route()


@pytest.mark.parametrize("what, down", [(UNAVAILABLE_FIRST, "decode"), (PREFILL_DOWN, "prefill")])
async def test_an_unavailable_worker_leaves_routing_until_it_is_republished(backend, what, down):
    b, servicer = backend
    with pytest.raises(BackendUnavailable, match="UNAVAILABLE"):
        await collect(b, what)
    with pytest.raises(BackendUnavailable, match=f"no live {down}"):
        await b.view.route()
    await asyncio.sleep(b.view.refresh_s)      # a read after the drop sees the last heartbeat
    with pytest.raises(BackendUnavailable, match=f"no live {down}"):
        await b.view.route()
    [info] = [w for w in servicer.registry.live() if w.role == down]
    servicer.registry.publish(info)            # its next heartbeat
    await asyncio.sleep(b.view.refresh_s)
    assert [w.worker_id for w in await b.view.route()] == ["d0", "p0"]


async def test_a_worker_failing_before_the_first_token_is_retried_once_on_another(backend):
    b, servicer = backend
    [d0] = [w for w in servicer.registry.live() if w.worker_id == "d0"]
    servicer.registry.publish(replace(d0, worker_id="d1"))     # a second decode worker (same server)
    chunks = await collect(b, DOWN_ONCE)
    assert [c.text for c in chunks] == ["a", "b"] and servicer.calls == 2


async def test_a_second_failure_or_no_other_worker_is_not_retried_again(backend):
    b, servicer = backend
    with pytest.raises(BackendUnavailable, match="UNAVAILABLE"):     # d0 was the only decode worker
        await collect(b, UNAVAILABLE_FIRST)
    assert servicer.calls == 1


async def test_nothing_is_retried_after_the_first_token(backend):
    b, servicer = backend
    [d0] = [w for w in servicer.registry.live() if w.worker_id == "d0"]
    servicer.registry.publish(replace(d0, worker_id="d1"))
    chunks = await collect(b, FAIL_AFTER_ONE)
    assert chunks[-1].finish_reason == "error" and servicer.calls == 1


async def test_channels_to_workers_that_left_are_closed_once_idle(backend):
    b, servicer = backend
    [d0] = [w for w in servicer.registry.live() if w.worker_id == "d0"]
    await collect(b, OK)
    servicer.registry.publish(replace(d0, worker_id="d9", address="127.0.0.1:1"))  # nobody serves it
    await asyncio.sleep(b.view.refresh_s)
    await b.ready()
    assert b.channels == {d0.address, "127.0.0.1:1"}
    servicer.registry.remove("d9")
    hanging = b.generate(params(HANG))
    assert (await anext(hanging)).text == "a" and b.in_flight == {d0.address: 1}
    servicer.registry.remove("d0")                    # both leave while a call runs on their channel
    servicer.registry.remove("p0")
    await asyncio.sleep(b.view.refresh_s)
    await b.ready()
    assert b.channels == {d0.address}                 # the idle one is gone, the busy one kept
    await hanging.aclose()
    assert not b.in_flight
    await b.ready()
    assert b.channels == set()


async def test_a_worker_at_capacity_is_overloaded_and_stays_routable(backend):
    b, servicer = backend
    with pytest.raises(Overloaded, match="holds too much KV"):
        await collect(b, BUSY)
    assert servicer.calls == 1                                   # not retried elsewhere
    assert [c.finish_reason for c in await collect(b, OK)][-1] == "stop"   # not marked down

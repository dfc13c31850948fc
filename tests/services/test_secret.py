"""The worker secret on a real gRPC server: refused without it, served with it, health always open."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.tandem.v1 import worker_pb2 as pb
from protos.tandem.v1 import worker_pb2_grpc as rpc
from services.secret import METADATA_KEY, aio_interceptors, secret_channel
from services.worker import WorkerConfig, grpc_server

SECRET = "s3cret-for-tests"


class StatusOnly(rpc.DecodeServiceServicer):
    def Status(self, request, context):
        return pb.WorkerStatus(pid=42)


@pytest.fixture
def address():
    from grpc_health.v1 import health

    server, port = grpc_server(WorkerConfig(role="decode", secret=SECRET))
    rpc.add_DecodeServiceServicer_to_server(StatusOnly(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


@pytest.mark.parametrize("metadata", [None, ((METADATA_KEY, "wrong"),), ((METADATA_KEY, SECRET[:-1]),)])
def test_a_call_without_the_secret_is_unauthenticated(address, metadata):
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as e:
            rpc.DecodeServiceStub(channel).Status(pb.StatusRequest(), timeout=5, metadata=metadata)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_streaming_call_without_the_secret_is_unauthenticated(address):
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as e:
            list(rpc.DecodeServiceStub(channel).Generate(pb.GenerateRequest(request_id="x"), timeout=5))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_sync_client_with_the_secret_is_served(address):
    with secret_channel(address, SECRET) as channel:
        assert rpc.DecodeServiceStub(channel).Status(pb.StatusRequest(), timeout=5).pid == 42


def test_an_aio_client_with_the_secret_is_served(address):
    async def status():
        async with grpc.aio.insecure_channel(address, interceptors=aio_interceptors(SECRET)) as channel:
            return await rpc.DecodeServiceStub(channel).Status(pb.StatusRequest(), timeout=5)
    assert asyncio.run(status()).pid == 42


def test_health_needs_no_secret(address):
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_worker_without_a_secret_is_open():
    server, port = grpc_server(WorkerConfig(role="decode"))
    rpc.add_DecodeServiceServicer_to_server(StatusOnly(), server)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert rpc.DecodeServiceStub(channel).Status(pb.StatusRequest(), timeout=5).pid == 42
    finally:
        server.stop(0)


def test_an_aio_streaming_call_with_the_secret_reaches_the_servicer(address):
    async def generate():
        async with grpc.aio.insecure_channel(address, interceptors=aio_interceptors(SECRET)) as channel:
            return [e async for e in rpc.DecodeServiceStub(channel).Generate(pb.GenerateRequest(), timeout=5)]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        asyncio.run(generate())
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED   # past the check: StatusOnly has no Generate

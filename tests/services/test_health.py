"""The workers' standard gRPC health service follows the engine loop, not just the server."""

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.health import NOT_SERVING, SERVING, EngineHealth
from services.worker import WorkerConfig, grpc_server


class FakeLoop:
    def __init__(self):
        self.alive = True
        self.last_beat = time.monotonic()


def check(port: int, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_serving_while_the_loop_turns_not_serving_once_it_stalls_dies_or_stops():
    loop = FakeLoop()
    server, port = grpc_server(WorkerConfig(role="decode"))
    health = EngineHealth(loop, "tandem.v1.DecodeService", stall_s=0.5, interval_s=0.05).attach(server)
    server.start()
    try:
        assert check(port) == SERVING and check(port, "tandem.v1.DecodeService") == SERVING
        time.sleep(0.8)                       # no beat for longer than stall_s: a stuck step
        assert check(port) == NOT_SERVING
        loop.last_beat = time.monotonic()
        time.sleep(0.2)
        assert check(port, "tandem.v1.DecodeService") == SERVING
        loop.alive = False                    # the loop thread died
        time.sleep(0.2)
        assert check(port) == NOT_SERVING
        loop.alive = True
        time.sleep(0.2)
        health.stop()                         # shutting down: probes fail first
        assert check(port) == NOT_SERVING
    finally:
        server.stop(0)

"""The standard gRPC health service (``grpc.health.v1.Health``) on a worker, driven by its engine.

Rule: a worker is SERVING while its engine loop thread is alive and has turned within
``stall_s`` seconds (the loop stamps ``last_beat`` every turn, at least every 0.5 s when idle), so
a probe sees a hung or dead engine, not just a live gRPC server. The overall status (service
``""``) and the worker's own service name carry the same value. ``stop`` sets NOT_SERVING for
good (graceful shutdown: probes fail before the server goes away).
"""

from __future__ import annotations

import threading
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class EngineHealth:
    def __init__(self, loop, service: str, stall_s: float = 60.0, interval_s: float = 1.0):
        """``loop``: an ``EngineLoop``; ``service``: the worker's full gRPC service name."""
        self.loop = loop
        self.services = ("", service)
        self.stall_s = stall_s
        self.interval_s = interval_s
        self.servicer = health.HealthServicer(experimental_non_blocking=True)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="engine-health")

    def attach(self, server: grpc.Server) -> "EngineHealth":
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
        self._set(self.status())
        self._thread.start()
        return self

    def status(self) -> int:
        fresh = time.monotonic() - self.loop.last_beat < self.stall_s
        return SERVING if self.loop.alive and fresh else NOT_SERVING

    def stop(self) -> None:
        self._stopped.set()
        self.servicer.enter_graceful_shutdown()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            self._set(self.status())

    def _set(self, status: int) -> None:
        for name in self.services:
            self.servicer.set(name, status)

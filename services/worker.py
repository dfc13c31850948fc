"""What both worker processes share: their config, status, gRPC server and registry heartbeat.

A worker's life: build the engine (loads the model), start the engine loop and the gRPC server
(with the standard gRPC health service, services/health.py), serve Prometheus metrics on the
metrics port (services/metrics.py), announce itself in the registry with a heartbeat that expires, serve until SIGTERM/SIGINT, then
drain and exit.

Drain (SIGTERM/SIGINT; ``tandem ray scale`` down uses it): the worker leaves the registry and its
gRPC health turns NOT_SERVING, so gateways stop routing to it; new work (``Generate``,
``Prefill``) is refused with UNAVAILABLE, which a gateway retries on another worker; what it holds
(open streams, prompt KV not yet pulled) finishes, for up to ``drain_timeout_s``; then the engine,
the server and the KV store stop and the process exits 0. An engine that failed
``max_step_failures`` steps in a row (``EngineLoop.failed``) leaves at once, without draining, and
the process exits 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import grpc

from protos.tandem.v1 import worker_pb2 as pb
from services.engine import EngineConfig, InvalidRequestError, omp
from services.secret import server_interceptors
from services.wire import PARAM_KEY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    """One worker process. ``port`` 0 picks a free port; ``advertise_host`` is what others dial."""

    role: str
    engine: EngineConfig = field(default_factory=EngineConfig)
    host: str = "127.0.0.1"
    port: int = 0
    advertise_host: str = ""
    redis_url: str = ""
    worker_id: str = ""
    kv_timeout_s: float = 30.0
    request_timeout_s: float = 600.0
    held_kv_ttl_s: float = 60.0
    max_held_kv_bytes: int = 1 << 30
    heartbeat_ttl_s: float = 5.0
    test_hooks: bool = False
    metrics_port: int = 0          # Prometheus /metrics on ``host``; 0 picks a free port
    engine_stall_s: float = 60.0   # gRPC health says NOT_SERVING once the engine loop stalls this long
    max_step_failures: int = 3     # failed engine steps in a row after which the worker exits 1
    secret: str = field(default="", repr=False)   # every gRPC call must carry it (services/secret.py); "" is open
    drain_timeout_s: float = 60.0  # on SIGTERM: the longest wait for the work it holds to finish
    shared_threads: int = 0        # decode: torch threads left idle while a prefill it asked for runs

    def __post_init__(self):
        if self.role not in ("prefill", "decode", "colocated"):
            raise ValueError(f"role must be prefill, decode or colocated, got {self.role!r}")
        if not self.worker_id:
            object.__setattr__(self, "worker_id", f"{self.role}-{socket.gethostname()}-{uuid.uuid4().hex[:6]}")

    @property
    def dial_host(self) -> str:
        return self.advertise_host or self.host


def seconds_since_start() -> float | None:
    """Wall seconds since this process started (Linux /proc), for start-up timing lines."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def startup_line(engine_seconds: float) -> str:
    """Where a worker's start-up time went: ``ready after X s (engine load Y s)``."""
    total = seconds_since_start()
    shown = f"{total:.1f} s" if total is not None else "?"
    return f"ready after {shown} (engine load {engine_seconds:.1f} s; the rest is imports and serving)"


def abort_invalid(context: grpc.ServicerContext, error: InvalidRequestError) -> None:
    """End the call with INVALID_ARGUMENT, naming the field in trailing metadata."""
    context.set_trailing_metadata(((PARAM_KEY, error.field),))
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, error.message)


def worker_status(loop, drain: "Drain", **extra: int) -> pb.WorkerStatus:
    """Load, cache and per-request state of the worker driving ``loop`` (an ``EngineLoop``);
    ``extra``: role-specific ``WorkerStatus`` fields. Never waits for a model step (the registry
    heartbeat publishes it)."""
    engine = loop.engine
    s, cache, counts = engine.scheduler, engine.prefix_cache_stats(), engine.request_counts()
    return pb.WorkerStatus(pid=os.getpid(), num_running=len(s.running), num_waiting=len(s.waiting),
                           free_blocks=engine.blocks.num_free, total_blocks=engine.blocks.num_blocks,
                           max_num_seqs=engine.config.max_num_seqs,
                           prefix_cache_queries=cache.queries, prefix_cache_hits=cache.hits,
                           prefix_cached_blocks=cache.cached_blocks,
                           prefix_cache_evictions=cache.evictions,
                           live_requests=counts.live, awaiting_kv=counts.awaiting_kv,
                           held_kv_requests=counts.held, held_kv_bytes=counts.held_bytes,
                           subscribers=loop.subscribers, calls_in_progress=drain.calls,
                           num_threads=engine.num_threads, **extra)


def observe(config: WorkerConfig, loop, server: grpc.Server, service: str, metrics) -> tuple:
    """Serve gRPC health for ``service`` on ``server`` and ``metrics`` over HTTP.

    Returns (``EngineHealth``, the metrics ``host:port`` others scrape).
    """
    from services import metrics as worker_metrics
    from services.health import EngineHealth

    health = EngineHealth(loop, service, stall_s=config.engine_stall_s).attach(server)
    port = worker_metrics.serve(metrics, config.host, config.metrics_port)
    return health, f"{config.dial_host}:{port}"


def grpc_server(config: WorkerConfig) -> tuple[grpc.Server, int]:
    # gRPC threads copy and checksum KV: on their own thread, so the engine loop's OpenMP team is
    # the only one (services/engine/omp.py)
    server = grpc.server(omp.executor(4 * config.engine.max_num_seqs + 16),
                         interceptors=server_interceptors(config.secret),
                         options=[("grpc.max_send_message_length", 64 << 20),
                                  ("grpc.max_receive_message_length", 64 << 20)])
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise RuntimeError(f"cannot listen on {config.host}:{config.port}")
    return server, port


class Drain:
    """A worker's drain state.

    Rules: handlers of new work call ``refuse_new`` (UNAVAILABLE once ``begin`` ran) and run inside
    ``hold()``; ``wait`` returns once no call is held and ``also_busy()`` (held KV, queued
    requests) is False, or when its deadline passes."""

    def __init__(self, also_busy=lambda: False):
        self.also_busy = also_busy
        self.started = threading.Event()
        self._held = 0
        self._lock = threading.Lock()

    def begin(self) -> None:
        self.started.set()

    def refuse_new(self, context: grpc.ServicerContext, worker_id: str) -> None:
        if self.started.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, f"worker {worker_id} is draining; it takes no new work")

    @contextlib.contextmanager
    def hold(self):
        with self._lock:
            self._held += 1
        try:
            yield
        finally:
            with self._lock:
                self._held -= 1

    @property
    def calls(self) -> int:
        """Calls running inside ``hold()`` now (the ``calls_in_progress`` of ``Status``)."""
        return self._held

    def busy(self) -> bool:
        return self._held > 0 or self.also_busy()

    def wait(self, timeout_s: float) -> bool:
        """True when the held work finished within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.busy():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True


def run_until_signal(server: grpc.Server, leave, on_stop, drain: Drain, config: WorkerConfig,
                     failed: threading.Event | None = None) -> int:
    """Serve until SIGTERM or SIGINT (then drain; exit status 0) or until ``failed`` is set (1).

    ``leave`` takes the worker out of routing (health NOT_SERVING, registry entry deleted); the
    work it holds then finishes (``drain``, then the server's grace period for calls still open),
    and ``on_stop`` stops the engine and what else the worker runs."""
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(0.5):
        if failed is not None and failed.is_set():
            log.critical("the engine cannot serve; leaving the registry and exiting")
            break
    broken = failed is not None and failed.is_set()
    log.info("stopping" if broken else "draining (up to %.0f s)", config.drain_timeout_s)
    drain.begin()
    leave()
    grace = 5.0
    if not broken:
        started = time.monotonic()
        if not drain.wait(config.drain_timeout_s):
            log.warning("work still held after %.0f s of draining; stopping anyway", config.drain_timeout_s)
        grace = max(grace, config.drain_timeout_s - (time.monotonic() - started))
    server.stop(grace=grace).wait(grace + 5)
    on_stop()
    log.info("stopped")
    return 1 if broken else 0


def registry_heartbeat(config: WorkerConfig, address: str, status, extra: dict | None = None):
    """Start publishing this worker in the registry (None when no Redis is configured)."""
    if not config.redis_url:
        return None
    import redis

    from services.registry import Heartbeat, WorkerInfo, WorkerRegistry

    client = redis.Redis.from_url(config.redis_url, socket_timeout=2, socket_connect_timeout=2)
    registry = WorkerRegistry(client, ttl_seconds=config.heartbeat_ttl_s)
    started = time.time()

    def info() -> WorkerInfo:
        st = status()
        return WorkerInfo(worker_id=config.worker_id, role=config.role, address=address, pid=st.pid,
                          max_num_seqs=st.max_num_seqs, num_running=st.num_running,
                          num_waiting=st.num_waiting, free_blocks=st.free_blocks,
                          total_blocks=st.total_blocks, started_at=started, updated_at=time.time(),
                          **(extra or {}))

    heartbeat = Heartbeat(registry, info, interval=config.heartbeat_ttl_s / 3)
    heartbeat.start()
    return heartbeat

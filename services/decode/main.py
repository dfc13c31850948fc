"""``tandem decode`` (and ``tandem colocated``): build the engine, host the KV store, serve DecodeService."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from protos.tandem.v1 import worker_pb2_grpc as rpc
from services.decode.handoff import KvPuller, PeerReaper
from services.decode.server import DecodeServicer
from services.engine import LLMEngine, omp
from services.engine.loop import EngineLoop
from services.metrics import WorkerMetrics
from services.transfer import KvStoreServer
from services.worker import startup_line, WorkerConfig, grpc_server, observe, registry_heartbeat, run_until_signal

log = logging.getLogger(__name__)


def serve(config: WorkerConfig, cache_dir: Path, kv_port: int = 0) -> int:
    loading = time.monotonic()
    engine = LLMEngine(config.engine, cache_dir)
    engine_seconds = time.monotonic() - loading
    omp.release()   # only the engine loop keeps an OpenMP team (services/engine/omp.py)
    omp.serial()
    loop = EngineLoop(engine, max_step_failures=config.max_step_failures).start()
    store = puller = None
    if config.role == "decode":   # a colocated worker prefills itself: no KV comes in
        store = KvStoreServer(config.dial_host, kv_port)   # listens on the advertised address only
        puller = KvPuller(config.worker_id, store, engine.device, config.kv_timeout_s, secret=config.secret)
    metrics = WorkerMetrics(engine.model_name, config.role, config.worker_id)
    metrics.bind(engine, puller.pairs_open if puller else lambda: 0)
    servicer = DecodeServicer(loop, config, puller, metrics)
    if puller and config.shared_threads:
        loop.threads = servicer.step_threads
    server, port = grpc_server(config)
    rpc.add_DecodeServiceServicer_to_server(servicer, server)
    health, metrics_address = observe(config, loop, server, "tandem.v1.DecodeService", metrics)
    server.start()
    address = f"{config.dial_host}:{port}"
    extra = {"metrics_address": metrics_address}
    if store:
        extra["kv_store"] = f"{config.dial_host}:{store.port}"
    heartbeat = registry_heartbeat(config, address, lambda: servicer.Status(None, None), extra=extra)
    reaper = None
    if puller and config.redis_url:
        reaper = PeerReaper(puller, _live_prefill(config), interval_s=config.heartbeat_ttl_s).start()
    log.info("%s worker %s serving on %s (%s, %s weights%s), metrics on http://%s/metrics", config.role,
             config.worker_id, address, config.engine.dtype, config.engine.weights,
             f"; KV store on port {store.port}" if store else "", metrics_address)
    print(f"TANDEM_WORKER_READY {config.role} {config.worker_id} {address} metrics={metrics_address}", flush=True)
    log.info("%s worker %s %s", config.role, config.worker_id, startup_line(engine_seconds))
    engine.cache.commit_memory()   # the KV cache's pages, now that it serves (kv_cache.populate)

    def leave():
        health.stop()
        if heartbeat:
            heartbeat.stop()

    def stop():
        if reaper:
            reaper.stop()
        loop.stop()
        if puller:
            puller.close()
            store.close()

    return run_until_signal(server, leave, stop, servicer.drain, config, loop.failed)


def _live_prefill(config: WorkerConfig):
    import redis

    from services.registry import WorkerRegistry

    registry = WorkerRegistry(redis.Redis.from_url(config.redis_url, socket_timeout=2, socket_connect_timeout=2))
    return lambda: registry.live("prefill")

"""``tandem prefill``: build the engine, serve PrefillService, heartbeat into the registry."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from protos.tandem.v1 import worker_pb2_grpc as rpc
from services.engine import LLMEngine, omp
from services.engine.loop import EngineLoop
from services.metrics import WorkerMetrics
from services.prefill.server import PrefillServicer
from services.worker import startup_line, WorkerConfig, grpc_server, observe, registry_heartbeat, run_until_signal

log = logging.getLogger(__name__)


def serve(config: WorkerConfig, cache_dir: Path) -> int:
    loading = time.monotonic()
    engine = LLMEngine(config.engine, cache_dir)
    engine_seconds = time.monotonic() - loading
    omp.release()   # only the engine loop keeps an OpenMP team (services/engine/omp.py)
    omp.serial()
    loop = EngineLoop(engine, max_step_failures=config.max_step_failures)
    metrics = WorkerMetrics(engine.model_name, config.role, config.worker_id)
    servicer = PrefillServicer(loop, config, metrics)
    metrics.bind(engine, servicer.pairs_open)
    loop.housekeeping = servicer.housekeeping
    loop.start()
    server, port = grpc_server(config)
    rpc.add_PrefillServiceServicer_to_server(servicer, server)
    health, metrics_address = observe(config, loop, server, "tandem.v1.PrefillService", metrics)
    server.start()
    address = f"{config.dial_host}:{port}"
    heartbeat = registry_heartbeat(config, address, lambda: servicer.Status(None, None),
                                   extra={"metrics_address": metrics_address})
    log.info("prefill worker %s serving on %s (%s, %s weights), metrics on http://%s/metrics", config.worker_id,
             address, config.engine.dtype, config.engine.weights, metrics_address)
    print(f"TANDEM_WORKER_READY prefill {config.worker_id} {address} metrics={metrics_address}", flush=True)
    log.info("prefill worker %s %s", config.worker_id, startup_line(engine_seconds))
    engine.cache.commit_memory()   # the KV cache's pages, now that it serves (kv_cache.populate)

    def leave():
        health.stop()
        if heartbeat:
            heartbeat.stop()

    def stop():
        loop.stop()
        servicer.close()

    return run_until_signal(server, leave, stop, servicer.drain, config, loop.failed)

"""``tandem prefill``: build the engine, serve PrefillService, heartbeat into the registry."""

from __future__ import annotations

import logging
from pathlib import Path

from protos.tandem.v1 import worker_pb2_grpc as rpc
from services.engine import LLMEngine
from services.engine.loop import EngineLoop
from services.prefill.server import PrefillServicer
from services.worker import WorkerConfig, grpc_server, registry_heartbeat, run_until_signal

log = logging.getLogger(__name__)


def serve(config: WorkerConfig, cache_dir: Path) -> None:
    engine = LLMEngine(config.engine, cache_dir)
    loop = EngineLoop(engine)
    servicer = PrefillServicer(loop, config)
    loop.housekeeping = servicer.housekeeping
    loop.start()
    server, port = grpc_server(config)
    rpc.add_PrefillServiceServicer_to_server(servicer, server)
    server.start()
    address = f"{config.dial_host}:{port}"
    heartbeat = registry_heartbeat(config, address, lambda: servicer.Status(None, None))
    log.info("prefill worker %s serving on %s", config.worker_id, address)
    print(f"TANDEM_WORKER_READY prefill {config.worker_id} {address}", flush=True)

    def stop():
        if heartbeat:
            heartbeat.stop()
        loop.stop()
        servicer.close()

    run_until_signal(server, stop)

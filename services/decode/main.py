"""``tandem decode`` (and ``tandem colocated``): build the engine, host the KV store, serve DecodeService."""

from __future__ import annotations

import logging
from pathlib import Path

from protos.tandem.v1 import worker_pb2_grpc as rpc
from services.decode.handoff import KvPuller
from services.decode.server import DecodeServicer
from services.engine import LLMEngine
from services.engine.loop import EngineLoop
from services.transfer import KvStoreServer
from services.worker import WorkerConfig, grpc_server, registry_heartbeat, run_until_signal

log = logging.getLogger(__name__)


def serve(config: WorkerConfig, cache_dir: Path, kv_port: int = 0) -> None:
    engine = LLMEngine(config.engine, cache_dir)
    loop = EngineLoop(engine).start()
    store = puller = None
    if config.role == "decode":   # a colocated worker prefills itself: no KV comes in
        store = KvStoreServer(config.host, kv_port)
        puller = KvPuller(config.worker_id, store, engine.device, config.kv_timeout_s)
    servicer = DecodeServicer(loop, config, puller)
    server, port = grpc_server(config)
    rpc.add_DecodeServiceServicer_to_server(servicer, server)
    server.start()
    address = f"{config.dial_host}:{port}"
    extra = {"kv_store": f"{config.dial_host}:{store.port}"} if store else {}
    heartbeat = registry_heartbeat(config, address, lambda: servicer.Status(None, None), extra=extra)
    log.info("%s worker %s serving on %s%s", config.role, config.worker_id, address,
             f" (KV store on port {store.port})" if store else "")
    print(f"TANDEM_WORKER_READY {config.role} {config.worker_id} {address}", flush=True)

    def stop():
        if heartbeat:
            heartbeat.stop()
        loop.stop()
        if puller:
            puller.close()
            store.close()

    run_until_signal(server, stop)

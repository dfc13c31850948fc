"""A worker's Status: the registry heartbeat's version never waits for the engine's lock (a step
holds it; back-to-back steps under load kept heartbeats out past their TTL), and every Status
reports the torch threads the engine runs with."""

from __future__ import annotations

import threading
from concurrent import futures

import torch

from services.engine import EngineConfig, LLMEngine
from services.worker import worker_status


def test_the_heartbeat_status_does_not_wait_for_a_step(tiny_model_dir, tmp_path):
    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=1 << 20), tmp_path)
    pool = futures.ThreadPoolExecutor(2)
    with engine._lock:                               # what a long step holds
        beat = pool.submit(worker_status, engine, prefix_cache=False).result(timeout=5)
        full = pool.submit(worker_status, engine)
        assert not threading.Event().wait(0.2) and not full.done()   # the gRPC Status waits
    assert full.result(timeout=5).total_blocks == beat.total_blocks > 0
    assert beat.num_threads == full.result().num_threads == torch.get_num_threads()
    pool.shutdown()

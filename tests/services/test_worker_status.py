"""A worker's Status reports the torch threads the engine runs with (the CPU split's proof; that it
never waits for a step is tests/services/test_cancellation.py's)."""

from __future__ import annotations

import torch

from services.engine import EngineConfig, LLMEngine
from services.engine.loop import EngineLoop
from services.worker import Drain, worker_status


def test_status_reports_the_engines_torch_threads(tiny_model_dir, tmp_path):
    loop = EngineLoop(LLMEngine(EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=1 << 20), tmp_path))
    status = worker_status(loop, Drain())
    assert status.num_threads == torch.get_num_threads() and status.total_blocks > 0

"""The engine loop runs each step with the torch threads its ``threads`` callable names (a decode
worker leaves the cores it shares with a running prefill: ``DecodeServicer.step_threads``)."""

from __future__ import annotations

import torch

from services.decode.server import DecodeServicer
from services.engine import EngineConfig, LLMEngine, SamplingParams
from services.engine.loop import EngineLoop
from services.worker import WorkerConfig


def finish(loop: EngineLoop, rid: str) -> None:
    q = loop.subscribe(rid)
    loop.engine.add_request(rid, [1, 2, 3, 4, 5, 6], SamplingParams(max_tokens=3))
    loop.wake()
    while not q.get(timeout=10).finished:
        pass


def test_each_step_runs_with_the_threads_the_loop_is_told(tiny_model_dir, tmp_path):
    before = torch.get_num_threads()
    try:
        engine = LLMEngine(EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=1 << 20, block_size=4,
                                        num_threads=2), tmp_path)
        want, seen, step = [1], [], engine.step

        def recording():
            seen.append((want[0], torch.get_num_threads()))   # on the loop thread, as the step runs
            return step()

        engine.step = recording
        loop = EngineLoop(engine, threads=lambda: want[0]).start()
        try:
            finish(loop, "a")
            want[0] = 2
            finish(loop, "b")
        finally:
            loop.stop()
        assert {w for w, _ in seen} == {1, 2} and all(w == got for w, got in seen), seen
        assert loop.last_threads == 2
    finally:
        torch.set_num_threads(before)


def test_a_decode_worker_leaves_shared_threads_while_a_prefill_runs(tiny_model_dir, tmp_path):
    before = torch.get_num_threads()
    try:
        engine = LLMEngine(EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=1 << 20, block_size=4,
                                        num_threads=2), tmp_path)
        servicer = DecodeServicer(EngineLoop(engine), WorkerConfig(role="decode", shared_threads=1), None)
        assert servicer.step_threads() == 2
        servicer._prefilling = 3
        assert servicer.step_threads() == 1
        greedy = DecodeServicer(EngineLoop(engine), WorkerConfig(role="decode", shared_threads=5), None)
        greedy._prefilling = 1
        assert greedy.step_threads() == 1                 # never fewer than one thread
    finally:
        torch.set_num_threads(before)

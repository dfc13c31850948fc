"""A failing engine step ends its requests with an error at once; repeated failures stop the loop
(real engine on the tiny model; the fault comes from the ``test_fail_step`` hook)."""

from __future__ import annotations

import pytest

from services.engine import EngineConfig, LLMEngine, SamplingParams
from services.engine.loop import EngineLoop


@pytest.fixture
def failing_loop(tiny_model_dir, tmp_path):
    config = EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=1 << 20, block_size=4,
                          test_fail_step=True)
    loop = EngineLoop(LLMEngine(config, tmp_path), max_step_failures=3).start()
    yield loop
    loop.stop()


def run_one(loop: EngineLoop, rid: str, n: int = 2):
    """Queue ``n`` requests under ``rid``; return their final outputs."""
    queues = {f"{rid}-{i}": loop.subscribe(f"{rid}-{i}") for i in range(n)}
    for r in queues:
        loop.engine.add_request(r, [1, 2, 3, 4, 5, 6], SamplingParams(max_tokens=4))
    loop.wake()
    return [q.get(timeout=5) for q in queues.values()]


def test_a_failed_step_ends_every_request_with_an_error_and_frees_its_blocks(failing_loop):
    outs = run_one(failing_loop, "a")
    assert all(o.finished and o.finish_reason == "error" for o in outs)
    assert all("TANDEM_TEST_FAIL_STEP" in o.error for o in outs)
    engine = failing_loop.engine
    assert not engine.has_unfinished() and engine.blocks.num_free == engine.blocks.num_blocks
    assert not failing_loop.failed.is_set() and failing_loop.alive


def test_repeated_failures_stop_the_loop_for_good(failing_loop):
    for i in range(3):
        assert [o.finish_reason for o in run_one(failing_loop, f"r{i}", n=1)] == ["error"]
    assert failing_loop.failed.wait(2)
    failing_loop._thread.join(2)
    assert not failing_loop.alive


def test_a_successful_step_resets_the_count(tiny_model_dir, tmp_path):
    loop = EngineLoop(LLMEngine(EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=1 << 20,
                                             block_size=4), tmp_path), max_step_failures=2)
    loop._failures = 1
    loop._deliver(loop._step())   # nothing queued: an empty, successful step
    assert loop._failures == 0 and not loop.failed.is_set()

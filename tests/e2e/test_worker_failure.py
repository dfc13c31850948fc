"""A worker whose engine step raises ends its requests with errors, leaves the registry at once and
exits 1; the gateway stops routing to it. Real Redis, a real colocated worker process and gateway,
the real model; the fault comes from the ``TANDEM_TEST_FAIL_STEP`` test hook."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from services.registry import WorkerRegistry
from tandem.redis_server import EmbeddedRedis
from tests.e2e.conftest import start_gateway

pytestmark = pytest.mark.slow
MODEL = "SmolLM2-135M-Instruct"
SECRET = "worker-failure-test-secret"


def start_worker(redis_url: str, **env: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "tandem.cli", "colocated", "--metrics-port", "0"],
                            env=dict(os.environ, TANDEM_REDIS_URL=redis_url, TANDEM_KV_CACHE_GB="0.5",
                                     TANDEM_WORKER_SECRET=SECRET, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("TANDEM_WORKER_READY"):
            return proc
    raise RuntimeError(f"worker exited with {proc.wait()} before it was ready")


@pytest.fixture
def failing_stack(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as redis:
        # A long heartbeat TTL: only the worker's own removal can take it out of the registry in time.
        worker = start_worker(redis.url, TANDEM_TEST_HOOKS="1", TANDEM_TEST_FAIL_STEP="colocated",
                              TANDEM_HEARTBEAT_TTL_S="60", TANDEM_MAX_STEP_FAILURES="3")
        gateway, base = start_gateway(redis.url, TANDEM_WORKER_SECRET=SECRET)
        try:
            yield worker, base, WorkerRegistry(redis.client())
        finally:
            for proc in (gateway, worker):
                proc.kill()
                proc.wait(10)


def test_a_failing_engine_ends_requests_with_errors_then_the_worker_leaves(failing_stack):
    worker, base, registry = failing_stack
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=30)
    assert [w.role for w in registry.live()] == ["colocated"]
    for stream in (False, True, False):   # three failed steps in a row: the worker gives up
        started = time.monotonic()
        with pytest.raises(openai.APIError) as e:
            reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                   max_tokens=8, stream=stream)
            if stream:
                list(reply)
        assert "worker failed" in str(e.value) and time.monotonic() - started < 10
        assert "engine step failed" not in str(e.value)     # the cause: in the worker's log only
    assert worker.wait(15) == 1
    assert registry.live() == []          # removed by the worker itself, not by expiry (60 s)
    deadline = time.monotonic() + 5       # the gateway's view refreshes every second
    while httpx.get(f"{base}/ready", timeout=5).status_code == 200:
        assert time.monotonic() < deadline, "/ready still 200 after the worker left"
        time.sleep(0.2)

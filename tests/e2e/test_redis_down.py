"""Redis hung (SIGSTOP) under a real stack: unstored work (Chat, Responses with ``store: false``)
is routed from the gateway's last registry view for ``TANDEM_REGISTRY_STALE_S``; stored work gets
503, never a false success; a key with a rate limit gets 503 (fail closed); ``/ready`` says what
is degraded; past the bound everything is a clear 503; after SIGCONT all of it works again.
Its own stack (started once for this module), the real model."""

from __future__ import annotations

import os
import signal
import time

import httpx
import openai
import pytest
import redis

from tests.e2e.conftest import start_up, stop_up

pytestmark = pytest.mark.slow
MODEL = "SmolLM2-135M-Instruct"
STALE_S = 25.0
REDIS_TIMEOUT_S = 0.5    # TANDEM_REDIS_TIMEOUT_S: a stored call fails after four tries of this
ENV = {"TANDEM_REGISTRY_STALE_S": str(STALE_S), "TANDEM_REDIS_TIMEOUT_S": str(REDIS_TIMEOUT_S)}
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory):
    s = start_up(tmp_path_factory.mktemp("redis-down"), extra_env=ENV)
    yield s
    stop_up(s)


def test_unstored_work_survives_a_hung_redis_for_the_stated_time(own_stack):
    client = own_stack.client()
    base = own_stack.base_url.removesuffix("/v1")
    limited, limited_base = own_stack.start_gateway(TANDEM_RATE_LIMIT_REQUESTS_PER_MINUTE="1000", **ENV)
    redis_pid = redis.Redis.from_url(own_stack.redis_url, socket_timeout=5).info()["process_id"]
    try:
        assert client.chat.completions.create(model=MODEL, messages=HI, max_tokens=4).choices
        os.kill(redis_pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            _unstored_succeed_and_stored_fail(client, base, limited_base)
            assert time.monotonic() - stopped < STALE_S, "the checks took longer than the bound"
            time.sleep(max(0.0, STALE_S + 1 - (time.monotonic() - stopped)))
            with pytest.raises(openai.APIStatusError) as e:        # past the bound: 503, at once
                client.chat.completions.create(model=MODEL, messages=HI, max_tokens=4)
            assert e.value.status_code == 503 and e.value.code == "backend_unavailable"   # why: logs only
            ready = httpx.get(f"{base}/ready", timeout=10)
            assert ready.status_code == 503 and "registry" in ready.json()["degraded"]
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/ready", timeout=10).json()["degraded"]:
            assert time.monotonic() < deadline, "the gateway did not recover"
            time.sleep(0.5)
        assert client.chat.completions.create(model=MODEL, messages=HI, max_tokens=4).choices
        stored = client.responses.create(model=MODEL, input="Hi", max_output_tokens=4)
        assert client.responses.retrieve(stored.id).status in ("completed", "incomplete")
    finally:
        limited.kill()
        limited.wait(30)


def _unstored_succeed_and_stored_fail(client, base: str, limited_base: str) -> None:
    chat = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=4)
    assert chat.choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(model=MODEL, messages=HI, max_tokens=4, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    unstored = client.responses.create(model=MODEL, input="Hi", max_output_tokens=4, store=False)
    assert unstored.status in ("completed", "incomplete")
    ready = httpx.get(f"{base}/ready", timeout=10)
    assert ready.status_code == 200 and set(ready.json()["degraded"]) == {"store", "registry"}
    limited = httpx.post(f"{limited_base}/v1/chat/completions", timeout=30,
                         json={"model": MODEL, "messages": HI, "max_tokens": 4})
    assert limited.status_code == 503 and limited.json()["error"]["code"] == "store_unavailable"
    for call in (lambda: client.responses.create(model=MODEL, input="Hi", max_output_tokens=4),
                 lambda: client.responses.create(model=MODEL, input="Hi", background=True),
                 lambda: client.responses.retrieve("resp_missing")):
        start = time.monotonic()
        with pytest.raises(openai.APIStatusError) as e:
            call()
        assert e.value.status_code == 503 and e.value.body["code"] == "store_unavailable"
        assert time.monotonic() - start < 4 * REDIS_TIMEOUT_S + 2.0       # bounded, never a hang

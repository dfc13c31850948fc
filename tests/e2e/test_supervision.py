"""``tandem up`` supervises its workers: SIGKILL the decode worker with streams in flight, each
stream ends with an error within BOUND_S, the worker is restarted, and later requests succeed;
SIGKILL the prefill worker, /ready says 503 within READY_BOUND_S.
Its own stack (started once for this module), the real model."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import openai
import pytest

from tests.e2e.conftest import start_up, stop_up

pytestmark = pytest.mark.slow
MODEL = "SmolLM2-135M-Instruct"
BOUND_S = 5.0       # from the kill to every stream's error
STREAMS = 6


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory):
    s = start_up(tmp_path_factory.mktemp("supervised"), extra_env={"TANDEM_HEARTBEAT_TTL_S": "2"})
    yield s
    stop_up(s)


def stream_until_error(client, started: threading.Barrier, ended: dict, i: int) -> None:
    try:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Tell me a long story."}], stream=True,
            max_tokens=1000, extra_body={"ignore_eos": True})
        for n, _ in enumerate(stream):
            if n == 1:
                started.wait(60)
        ended[i] = ("finished", time.monotonic())
    except openai.APIError as e:
        ended[i] = (f"error: {e}", time.monotonic())


def test_a_killed_decode_worker_fails_its_streams_fast_and_is_restarted(own_stack):
    client = own_stack.client()
    [decode] = own_stack.registry().live("decode")
    started, ended = threading.Barrier(STREAMS + 1), {}
    threads = [threading.Thread(target=stream_until_error, args=(client, started, ended, i), daemon=True)
               for i in range(STREAMS)]
    for t in threads:
        t.start()
    started.wait(120)
    killed = time.monotonic()
    os.kill(decode.pid, signal.SIGKILL)
    for t in threads:
        t.join(BOUND_S + 5)
    assert len(ended) == STREAMS
    for outcome, when in ended.values():
        assert outcome.startswith("error") and when - killed < BOUND_S, (outcome, when - killed)
    deadline = time.monotonic() + 180
    while not [w for w in own_stack.registry().live("decode") if w.pid != decode.pid]:
        assert time.monotonic() < deadline, "the decode worker was not restarted"
        time.sleep(0.5)
    time.sleep(2.5)   # the dead worker's entry has expired (TTL 2 s) and the gateway's view refreshed
    for _ in range(3):
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=8)
        assert reply.choices[0].finish_reason in ("stop", "length")
    assert any("restarted the decode worker" in line for line in own_stack.lines)


READY_BOUND_S = 1.5   # from a prefill worker's death to /ready 503 (gRPC health, not heartbeat expiry)


def test_a_killed_prefill_worker_turns_ready_503_at_once(own_stack):
    base = own_stack.base_url.removesuffix("/v1")
    assert httpx.get(f"{base}/ready", timeout=5).status_code == 200
    [prefill] = own_stack.registry().live("prefill")
    killed = time.monotonic()
    os.kill(prefill.pid, signal.SIGKILL)
    while (reply := httpx.get(f"{base}/ready", timeout=5)).status_code == 200:
        assert time.monotonic() - killed < READY_BOUND_S, "/ready still 200 after the prefill worker died"
        time.sleep(0.05)
    assert reply.status_code == 503 and "prefill" in reply.json()["reason"]
    deadline = time.monotonic() + 180
    while httpx.get(f"{base}/ready", timeout=5).status_code != 200:   # restarted and serving again
        assert time.monotonic() < deadline, "/ready never came back after the restart"
        time.sleep(0.5)
    reply = own_stack.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                       max_tokens=8)
    assert reply.choices[0].finish_reason in ("stop", "length")

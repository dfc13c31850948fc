"""A gateway SIGKILLed mid-stream: the stored event log replays in order, losing at most the
documented bound (``TANDEM_EVENT_LOG_BATCH`` events; gateway/responses/event_log.py). A background
response of a gateway that dies (or is stopped) ends ``failed`` on every replica (leases,
gateway/responses/lease.py)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest
import redis


pytestmark = pytest.mark.slow
BATCH = 8          # the crashing gateway's TANDEM_EVENT_LOG_BATCH


def test_killing_the_gateway_mid_stream_leaves_a_replayable_log(stack):
    proc, base = stack.start_gateway(TANDEM_EVENT_LOG_BATCH=str(BATCH))
    received: list[dict] = []
    try:
        body = {"model": "SmolLM2-135M-Instruct", "input": "Tell me a long story.", "stream": True,
                "max_output_tokens": 400, "ignore_eos": True, "temperature": 0}
        with httpx.stream("POST", f"{base}/v1/responses", json=body, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    received.append(json.loads(line[6:]))
                if len(received) == 40:
                    os.kill(proc.pid, signal.SIGKILL)       # mid-stream, no chance to clean up
                    break
    finally:
        proc.kill()
        proc.wait(30)
    rid = received[0]["response"]["id"]
    admin = redis.Redis.from_url(stack.redis_url, socket_timeout=5)
    logged = [json.loads(fields[b"json"]) for _, fields in
              admin.xrange(f"tandem:resp:{{{rid}}}:events")]
    seqs = [e["sequence_number"] for e in logged]
    assert seqs == list(range(len(seqs)))                   # a gapless prefix, in order
    assert len(logged) >= len(received) - BATCH             # lost at most the bound
    assert logged[:len(received)] == received[:len(logged)]  # the same events the client saw
    # Another replica replays it in order (the record stays in_progress: no runner is left).
    replay = []
    with httpx.stream("GET", f"{stack.base_url}/responses/{rid}",
                      params={"stream": "true"}, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                replay.append(json.loads(line[6:]))
            if len(replay) == len(logged):
                break
    assert replay == logged


LEASE_S = 3.0      # the crashing gateway's TANDEM_RESPONSE_LEASE_S
DETECT_S = LEASE_S + 2.0   # from its death to `failed` on another replica (lease + a replay's look)


def _start_background(base: str) -> str:
    body = {"model": "SmolLM2-135M-Instruct", "input": "Tell me a long story.", "background": True,
            "max_output_tokens": 2000, "ignore_eos": True, "temperature": 0}
    rid = httpx.post(f"{base}/v1/responses", json=body, timeout=60).json()["id"]
    deadline = time.monotonic() + 60
    while httpx.get(f"{base}/v1/responses/{rid}", timeout=10).json()["status"] != "in_progress":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return rid


def _wait_for_tokens(url: str, rid: str) -> None:
    """Return once the response's log has its first text delta."""
    with httpx.stream("GET", f"{url}/responses/{rid}", params={"stream": "true"}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["type"] == "response.output_text.delta":
                return


def _replay_until_end(url: str, rid: str, out: list) -> None:
    with httpx.stream("GET", f"{url}/responses/{rid}", params={"stream": "true"}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))


def test_a_background_response_of_a_killed_gateway_fails_within_the_lease(stack):
    """SIGKILL the gateway running a background response: another replica reports it ``failed``
    within the lease, and a replay that was following it ends with ``response.failed``."""
    proc, base = stack.start_gateway(TANDEM_RESPONSE_LEASE_S=str(LEASE_S))
    try:
        rid = _start_background(base)
        followed: list[dict] = []
        follower = threading.Thread(target=_replay_until_end, args=(stack.base_url, rid, followed))
        follower.start()
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
    finally:
        proc.kill()
        proc.wait(30)
    client = stack.client()
    while (status := client.responses.retrieve(rid).status) != "failed":
        assert status == "in_progress" and time.monotonic() - killed < DETECT_S, status
        time.sleep(0.2)
    follower.join(DETECT_S)
    assert not follower.is_alive(), "the replay did not end"
    assert followed[-1]["type"] == "response.failed"
    assert [e["sequence_number"] for e in followed] == list(range(len(followed)))
    replay = []
    _replay_until_end(stack.base_url, rid, replay)        # a fresh replay: the whole log, then the end
    assert replay == followed
    assert "stopped before it finished" in client.responses.retrieve(rid).error.message


def test_a_gateway_stopped_cleanly_fails_its_running_responses_instead_of_cancelling(stack):
    proc, base = stack.start_gateway()
    try:
        rid = _start_background(base)
        _wait_for_tokens(stack.base_url, rid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)           # uvicorn re-raises SIGTERM once it has shut down
    finally:
        proc.kill()
    response = stack.client().responses.retrieve(rid)
    assert response.status == "failed" and "shut down" in response.error.message
    replay = []
    _replay_until_end(stack.base_url, rid, replay)
    assert replay[-1]["type"] == "response.failed"
    assert replay[-1]["response"]["usage"]["output_tokens"] > 0     # the tokens made before it stopped

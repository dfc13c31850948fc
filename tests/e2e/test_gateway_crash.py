"""A gateway SIGKILLed mid-stream: the stored event log replays in order, losing at most the
documented bound (``TANDEM_EVENT_LOG_BATCH`` events; gateway/responses/event_log.py)."""

from __future__ import annotations

import json
import os
import signal

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

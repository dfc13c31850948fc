"""What a request leaves behind at the gateway, on the session stack (real workers, the real model):
a request that fails after its first token reports the usage it made so far; and after a churn of
completed, cut-off, timed-out and cancelled requests, no per-request state remains (counted by
``GET /debug/state``, served with ``TANDEM_TEST_HOOKS``)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow
MODEL = "SmolLM2-135M-Instruct"
HI = [{"role": "user", "content": "Tell me about Paris."}]
CORRUPT = {"x-tandem-test-corrupt-kv": "1"}    # the KV handoff fails after the first token


def test_a_chat_stream_that_fails_after_its_first_token_reports_its_usage(stack):
    chunks = []
    with pytest.raises(openai.APIError, match="worker failed"):   # the checksum error: logs only
        for chunk in stack.client().chat.completions.create(
                model=MODEL, messages=HI, max_tokens=20, stream=True, extra_headers=CORRUPT,
                stream_options={"include_usage": True}):
            chunks.append(chunk)
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == 1 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + 1


def test_a_failed_response_stream_carries_its_usage_so_far(stack):
    events = list(stack.client().responses.create(model=MODEL, input="Tell me about Paris.",
                                                  max_output_tokens=20, stream=True,
                                                  extra_headers=CORRUPT))
    assert events[-1].type == "response.failed"
    usage = events[-1].response.usage
    assert usage.output_tokens == 1 and usage.input_tokens > 0
    assert stack.client().responses.retrieve(events[-1].response.id).usage.output_tokens == 1


def _state(base: str) -> dict:
    return httpx.get(f"{base}/debug/state", timeout=10).json()


def _idle(state: dict, baseline: dict) -> bool:
    return (state["background_runs"] == state["response_tasks"] == state["leases"] == 0
            and not state["calls_in_flight"] and state["asyncio_tasks"] <= baseline["asyncio_tasks"])


def _chat_cut_after_first_chunk(base: str) -> None:
    body = {"model": MODEL, "messages": HI, "max_tokens": 200, "stream": True}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
        next(line for line in r.iter_lines() if line.startswith("data: "))


def _chat_timed_out(base: str) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base}/v1/chat/completions", timeout=0.3,
                   json={"model": MODEL, "messages": HI, "max_tokens": 200})


def _chat_completed(base: str) -> None:
    r = httpx.post(f"{base}/v1/chat/completions", timeout=60,
                   json={"model": MODEL, "messages": HI, "max_tokens": 4})
    assert r.status_code == 200


def _response_cut_after_first_delta(base: str) -> None:
    body = {"model": MODEL, "input": "Tell me about Paris.", "max_output_tokens": 200, "stream": True}
    with httpx.stream("POST", f"{base}/v1/responses", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["type"] == "response.output_text.delta":
                return


def _background_cancelled(base: str) -> None:
    body = {"model": MODEL, "input": "Tell me about Paris.", "max_output_tokens": 200, "background": True}
    rid = httpx.post(f"{base}/v1/responses", json=body, timeout=60).json()["id"]
    status = httpx.post(f"{base}/v1/responses/{rid}/cancel", timeout=60).json()["status"]
    assert status in ("cancelled", "completed", "incomplete")


def _response_completed(base: str) -> None:
    r = httpx.post(f"{base}/v1/responses", timeout=60,
                   json={"model": MODEL, "input": "Hi", "max_output_tokens": 4})
    assert r.status_code == 200


def test_no_per_request_state_outlives_its_request_after_churn(stack):
    base = stack.base_url.removesuffix("/v1")
    baseline = _state(base)
    kinds = [_chat_cut_after_first_chunk, _chat_timed_out, _chat_completed,
             _response_cut_after_first_delta, _background_cancelled, _response_completed]
    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(kind, base) for kind in kinds * 4]:
            future.result()
    deadline = time.monotonic() + 30
    while not _idle(state := _state(base), baseline):
        assert time.monotonic() < deadline, (state, baseline)
        time.sleep(0.5)

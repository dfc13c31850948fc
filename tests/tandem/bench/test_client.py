"""One streamed request against a fake transport: the events a server sends → the record."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tandem.bench.client import ChatClient
from tandem.bench.config import BenchConfig
from tandem.bench.workload import WorkloadRequest

REQ = WorkloadRequest("Hello there.", max_tokens=3, prompt_len=3)
HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def chunk(delta, finish=None):
    return {**HEAD, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": None}


USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15, "prefill_time": 0.05,
         "decode_time_arr": [0.01, 0.02]}
TANDEM_STREAM = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}),
                 chunk({"content": " there"}), chunk({"content": "!"}), chunk({}, "length"),
                 {**HEAD, "choices": [], "usage": USAGE}, "[DONE]"]


def sse(events) -> bytes:
    return "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events).encode()


def send(handler, req=REQ, **config):
    seen = []

    def record_body(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return handler(request)

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(record_body)) as http:
            client = ChatClient(BenchConfig("http://server/v1", "m", **config), http)
            return await client.send(req, index=5, start=0.0, scheduled_at=0.0)

    return asyncio.run(go()), seen[0]


def stream_of(events, status=200):
    return lambda request: httpx.Response(status, content=sse(events),
                                          headers={"content-type": "text/event-stream"})


def test_a_tandem_stream_with_include_usage():
    r, body = send(stream_of(TANDEM_STREAM))
    assert r.success and r.error is None and r.status == 200 and r.index == 5
    assert len(r.chunk_times) == 3                       # the role and finish chunks carry no content
    assert list(r.chunk_times) == sorted(r.chunk_times) and r.sent <= r.chunk_times[0] <= r.done
    assert (r.prompt_tokens, r.completion_tokens, r.finish_reason) == (12, 3, "length")
    assert r.prefill_time == 0.05 and r.decode_time_arr == (0.01, 0.02)
    assert (r.prompt_len, r.max_tokens) == (3, 3)


def test_the_request_body():
    _, body = send(stream_of(TANDEM_STREAM), extra_body={"top_k": 1})
    assert body == {"model": "m", "messages": [{"role": "user", "content": "Hello there."}],
                    "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True},
                    "temperature": 0.0, "ignore_eos": True, "top_k": 1}
    _, body = send(stream_of(TANDEM_STREAM), ignore_eos=False, temperature=None)
    assert "ignore_eos" not in body and "temperature" not in body


def test_a_server_without_usage_or_done():
    events = [chunk({"role": "assistant"}), chunk({"content": "a"}), chunk({"content": "b"}, "stop")]
    r, _ = send(stream_of(events))
    assert r.success and len(r.chunk_times) == 2 and r.finish_reason == "stop"
    assert r.completion_tokens is None and r.prompt_tokens is None and r.decode_time_arr is None


def test_events_after_done_are_not_read():
    r, _ = send(stream_of(TANDEM_STREAM + [chunk({"content": "late"})]))
    assert r.success and len(r.chunk_times) == 3


@pytest.mark.parametrize("handler, error", [
    (lambda req: httpx.Response(400, json={"error": {"message": "bad max_tokens"}}), "HTTP 400"),
    (stream_of([chunk({"content": "a"}), {"error": {"message": "A worker failed"}}, "[DONE]"]),
     "A worker failed"),
    (stream_of([chunk({"role": "assistant"}), chunk({}, "stop"), "[DONE]"]), "no content"),
    (stream_of(["{not json"]), "JSONDecodeError"),
])
def test_failures_become_records(handler, error):
    r, _ = send(handler)
    assert not r.success and error in r.error and r.done >= r.sent


def test_connection_errors_become_records():
    def refuse(request):
        raise httpx.ConnectError("connection refused")

    r, _ = send(refuse)
    assert not r.success and "ConnectError" in r.error and r.status is None


def test_each_chunk_is_timed_on_arrival():
    async def slow_body():
        for e in TANDEM_STREAM:
            await asyncio.sleep(0.03)
            yield sse([e])

    r, _ = send(lambda request: httpx.Response(200, content=slow_body()))
    gaps = [b - a for a, b in zip(r.chunk_times, r.chunk_times[1:])]
    assert r.success and gaps == pytest.approx([0.03, 0.03], abs=0.025)
    assert r.chunk_times[0] - r.sent >= 0.06                # after the role chunk and the first content
    assert r.done - r.chunk_times[-1] >= 0.09               # finish, usage and [DONE] came later


def test_a_request_past_its_timeout_becomes_a_record():
    async def hang(request):
        await asyncio.sleep(5)

    r, _ = send(hang, timeout_s=0.05)
    assert not r.success and "timed out" in r.error and r.done - r.sent < 1

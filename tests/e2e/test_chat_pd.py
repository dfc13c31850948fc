"""Chat Completions through the disaggregated path: real processes, Redis, model and SDK."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"
PARIS = [{"role": "user", "content": "What is the capital of France?"}]
KV_BYTES_PER_TOKEN = 30 * 2 * 3 * 64 * 4   # layers x (K,V) x kv_heads x head_dim x fp32


def chat(client, messages=PARIS, **kw):
    return client.chat.completions.create(model=MODEL, messages=messages, temperature=0, **kw)


def stream_chat(client, messages=PARIS, **kw):
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_health_ready_models(stack):
    base = stack.base_url.removesuffix("/v1")
    assert httpx.get(f"{base}/health").status_code == 200
    assert httpx.get(f"{base}/ready").status_code == 200
    assert [m.id for m in stack.client().models.list()] == [MODEL]


def test_paris_and_streaming_agrees_with_non_streaming(stack):
    client = stack.client()
    r = chat(client, max_tokens=30)
    assert "Paris" in r.choices[0].message.content
    text, chunks = stream_chat(client, max_tokens=30)
    assert text == r.choices[0].message.content
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    usage = chunks[-1].usage
    assert usage.completion_tokens == r.usage.completion_tokens
    assert len(content_chunks) <= usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        r.choices[0].finish_reason]


def test_greedy_pd_output_equals_tandem_generate(stack):
    prompt = "Name three famous painters and one work by each."
    r = chat(stack.client(), [{"role": "user", "content": prompt}], max_tokens=40)
    out = subprocess.run([sys.executable, "-m", "tandem.cli", "generate", prompt, "--max-tokens", "40"],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, TANDEM_KV_CACHE_GB="0.25"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip("\n") == r.choices[0].message.content
    assert f"completion_tokens={r.usage.completion_tokens}" in out.stderr


def test_kv_really_crossed_between_processes(stack):
    raw = stack.client().chat.completions.with_raw_response.create(model=MODEL, messages=PARIS, temperature=0,
                                                                    max_tokens=8)
    r = raw.parse()
    h = raw.headers
    prefill_pid, decode_pid = int(h["x-tandem-prefill-pid"]), int(h["x-tandem-decode-pid"])
    assert len({prefill_pid, decode_pid, stack.proc.pid}) == 3
    assert h["x-tandem-prefill-worker"].startswith("prefill-") and h["x-tandem-decode-worker"].startswith("decode-")
    held = int(h["x-tandem-kv-start-token"])       # blocks the decode worker had cached already
    assert held % 16 == 0 and held < r.usage.prompt_tokens
    assert int(h["x-tandem-kv-bytes"]) == (r.usage.prompt_tokens - held) * KV_BYTES_PER_TOKEN


def check_usage(usage):
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    extra = usage.model_extra
    assert isinstance(extra["prefill_time"], float) and extra["prefill_time"] > 0
    assert len(extra["decode_time_arr"]) == usage.completion_tokens - 1
    assert all(t >= 0 for t in extra["decode_time_arr"])


def test_usage_arithmetic_streaming_and_not(stack):
    client = stack.client()
    r = chat(client, max_tokens=12)
    check_usage(r.usage)
    _, chunks = stream_chat(client, max_tokens=12)
    assert chunks[-1].choices == []
    check_usage(chunks[-1].usage)
    r = chat(client, max_tokens=5, messages=[{"role": "user", "content": "Write a long essay about the ocean."}])
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    check_usage(r.usage)


def test_eight_concurrent_streams(stack):
    client = stack.client()
    questions = [f"Tell me one fact about the number {i}." for i in range(8)]
    expected = [chat(client, [{"role": "user", "content": q}], max_tokens=20).choices[0].message.content
                for q in questions]
    results: dict[int, str] = {}

    def run(i):
        results[i], _ = stream_chat(client, [{"role": "user", "content": questions[i]}], max_tokens=20)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join(300) for t in threads]
    assert [results.get(i) for i in range(8)] == expected


def test_corrupted_kv_fails_closed(stack):
    client = stack.client()
    with pytest.raises(openai.APIStatusError) as e:
        chat(client, max_tokens=10, extra_headers={"x-tandem-test-corrupt-kv": "1"})
    assert e.value.status_code == 502 and e.value.code == "worker_error"   # why: in the logs only
    with pytest.raises(openai.APIError) as e:
        stream_chat(client, max_tokens=10, extra_headers={"x-tandem-test-corrupt-kv": "1"})
    assert "worker failed" in str(e.value) and "checksum" not in str(e.value).lower()
    assert "Paris" in chat(client, max_tokens=20).choices[0].message.content   # still serving


@pytest.mark.parametrize("body,status,param", [
    ({"model": MODEL, "messages": PARIS, "temperature": 5}, 400, "temperature"),
    ({"model": MODEL, "messages": PARIS, "top_p": 0}, 400, "top_p"),
    ({"model": MODEL, "messages": PARIS, "max_tokens": 0}, 400, "max_tokens"),
    ({"model": MODEL, "messages": PARIS, "max_tokens": "many"}, 400, "max_tokens"),
    ({"model": MODEL, "messages": PARIS, "max_tokens": 9000}, 400, "max_tokens"),
    ({"model": MODEL, "messages": PARIS, "bogus_field": 1}, 400, "bogus_field"),
    ({"model": MODEL, "messages": []}, 400, "messages"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x " * 9000}]}, 400, "messages"),
    ({"model": "gpt-4o", "messages": PARIS}, 404, "model"),
])
def test_bad_input_gets_openai_error_and_service_continues(stack, body, status, param):
    base = stack.base_url
    r = httpx.post(f"{base}/chat/completions", json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["param"] == param, err
    r = httpx.post(f"{base}/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    ok = httpx.post(f"{base}/chat/completions", json={"model": MODEL, "messages": PARIS, "max_tokens": 3}, timeout=60)
    assert ok.status_code == 200


def wait_idle(stack, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = stack.worker_status("prefill") + stack.worker_status("decode")
        if all(s.free_blocks == s.total_blocks and s.num_running == 0 and s.num_waiting == 0 for s in statuses):
            return statuses
        time.sleep(0.2)
    raise AssertionError(f"workers still busy: {statuses}")


def test_client_disconnect_aborts_and_frees_kv_everywhere(stack):
    wait_idle(stack)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a very long story."}],
            "max_tokens": 2000, "stream": True, "temperature": 0}
    with httpx.stream("POST", f"{stack.base_url}/chat/completions", json=body, timeout=60) as r:
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data:")
            if seen >= 5:
                break
        busy = stack.worker_status("decode")
        assert any(s.num_running for s in busy)
    wait_idle(stack)


def test_late_decode_worker_is_discovered_and_used(stack, tmp_path):
    proc = stack.start_decode_worker("decode-late", TANDEM_TEST_HOOKS="1")
    try:
        client = stack.client()
        served = set()
        for i in range(12):     # different conversations: KV affinity spreads them over both workers
            messages = [{"role": "system", "content": f"You are tutor number {i}."}, *PARIS]
            raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages,
                                                                    temperature=0, max_tokens=8)
            assert raw.parse().choices[0].message.content
            served.add(raw.headers["x-tandem-decode-worker"])
            if "decode-late" in served and len(served) == 2:
                break
        assert "decode-late" in served and len(served) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    deadline = time.monotonic() + 10
    while "decode-late" in {w.worker_id for w in stack.registry().live("decode")}:
        assert time.monotonic() < deadline, "stopped worker still registered"
        time.sleep(0.2)
    assert "Paris" in chat(stack.client(), max_tokens=20).choices[0].message.content

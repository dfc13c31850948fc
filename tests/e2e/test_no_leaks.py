"""Nothing internal or private leaks (issue 13 item 6), on the real ``tandem up`` stack.

- A worker failure (a corrupted KV handoff, the ``x-tandem-test-corrupt-kv`` hook) reaches the
  client as a fixed message: no ``host:port``, worker id, pid or stack trace in the HTTP body, the
  SSE stream, the ``response.failed`` event or the stored failed response.
- The logs of every process (a gateway with an API key, the workers and ``tandem up`` itself, Redis)
  never hold a prompt, an output or a key, after requests of every kind, refused ones included.
"""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow
MODEL = "SmolLM2-135M-Instruct"
CORRUPT = {"x-tandem-test-corrupt-kv": "1"}
ADDRESS = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}:\d+|localhost:\d+|\[[0-9a-f:]+\]:\d+")


def assert_nothing_internal(text: str, stack) -> None:
    assert not ADDRESS.search(text), ADDRESS.search(text)
    assert "Traceback" not in text and 'File "' not in text
    for w in stack.registry().live():
        assert w.worker_id not in text
        assert not re.search(rf"\bpid\D{{0,3}}{w.pid}\b", text), w.pid


def error_messages(value) -> list[str]:
    """Every ``message`` (and ``error`` string) anywhere in a JSON value."""
    if isinstance(value, dict):
        own = [v for k, v in value.items() if k in ("message", "error") and isinstance(v, str)]
        return own + [m for v in value.values() for m in error_messages(v)]
    if isinstance(value, list):
        return [m for v in value for m in error_messages(v)]
    return []


def test_a_worker_failure_reaches_the_client_without_internals(stack):
    base = stack.base_url
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    with httpx.Client(timeout=120, headers=CORRUPT) as http:
        r = http.post(f"{base}/chat/completions", json=body)
        assert r.status_code == 502 and r.json()["error"]["code"] == "worker_error"
        assert_nothing_internal(r.text, stack)
        r = http.post(f"{base}/chat/completions", json={**body, "stream": True})
        assert r.status_code == 200 and '"error"' in r.text     # failed after the first token
        assert_nothing_internal(r.text, stack)
        r = http.post(f"{base}/responses", json={"model": MODEL, "input": "Hi", "max_output_tokens": 8,
                                                 "stream": True})
        assert "response.failed" in r.text
        assert_nothing_internal(r.text, stack)
        rid = re.search(r'"id":\s*"(resp_[^"]+)"', r.text).group(1)
        stored = http.get(f"{base}/responses/{rid}")
        assert stored.json()["status"] == "failed" and stored.json()["error"]["message"]
        assert_nothing_internal(stored.text, stack)
        replay = http.get(f"{base}/responses/{rid}", params={"stream": "true"})
        assert "response.failed" in replay.text
        assert_nothing_internal(replay.text, stack)
        for message in error_messages(stored.json()):
            assert "checksum" not in message.lower()     # the cause is in the logs, not here


def test_logs_hold_no_prompt_output_or_key(stack, tmp_path):
    key, wrong_key = f"sk-loggrep-{secrets.token_hex(12)}", f"sk-wrong-{secrets.token_hex(12)}"
    word = f"quokka{secrets.token_hex(4)}"
    prompt = f"Repeat this word exactly once: {word}"
    log = tmp_path / "gateway.log"
    mark = len(stack.lines)
    proc, base = stack.start_gateway(log, TANDEM_API_KEYS=f"{key}=loggrep")
    try:
        outputs = exercise(f"{base}/v1", key, wrong_key, prompt)
    finally:
        proc.terminate()
        proc.wait(30)
    time.sleep(0.5)                       # the workers' last lines reach ``tandem up``'s output
    logs = {"gateway": log.read_text(), "tandem up and workers": "".join(stack.lines[mark:]),
            "redis": "".join(p.read_text(errors="replace") for p in Path(stack.data_dir).rglob("*.log"))}
    assert "prompt tokens" in logs["gateway"]           # the gateway logged each request
    secrets_ = {"prompt": word, "output": max(outputs, key=len), "key": key, "wrong key": wrong_key}
    assert len(secrets_["output"]) >= 8, outputs
    for name, text in logs.items():
        for what, secret in secrets_.items():
            assert secret not in text, f"the {name} log holds the {what}"


def exercise(base_url: str, key: str, wrong_key: str, prompt: str) -> list[str]:
    """Requests of every kind with ``prompt``; the outputs the client got."""
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120)
    messages = [{"role": "user", "content": prompt}]
    outputs = [client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16,
                                              temperature=0).choices[0].message.content]
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0,
                                            stream=True)
    outputs.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    r = client.responses.create(model=MODEL, input=prompt, max_output_tokens=16, temperature=0)
    outputs.append(r.output_text)
    with client.responses.stream(model=MODEL, input="And once more, please.", previous_response_id=r.id,
                                 max_output_tokens=16, temperature=0) as s:
        outputs.append(s.get_final_response().output_text)
    assert list(client.responses.input_items.list(r.id))
    with pytest.raises(openai.BadRequestError):              # refused: the body is not logged either
        client.chat.completions.create(model=MODEL, messages=messages, extra_body={"bogus": prompt})
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url, api_key=wrong_key, max_retries=0).chat.completions.create(
            model=MODEL, messages=messages)
    return outputs

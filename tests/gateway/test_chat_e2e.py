"""Chat Completions end to end: the real SmolLM2 engine behind LocalBackend, uvicorn, the OpenAI SDK."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from gateway.app import create_app
from tests.gateway.local_backend import LocalBackend
from gateway.config import GatewaySettings

from .bad_requests import CASES, post_kwargs
from .serving import serve

pytestmark = pytest.mark.slow

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def local_engine():
    from services.engine import EngineConfig, LLMEngine
    from tandem.settings import Settings

    return LLMEngine(EngineConfig(kv_cache_bytes=256 << 20), Settings.from_env().cache_dir)


@pytest.fixture(scope="module")
def model(local_engine):
    return local_engine.model_name


@pytest.fixture(scope="module")
def base_url(local_engine, model):
    settings = GatewaySettings(served_model_name=model, request_timeout_s=120)
    with serve(create_app(LocalBackend(local_engine), settings)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)


def assert_usage(usage, completion_tokens=None):
    extra = usage.model_extra
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert extra["prefill_time"] > 0
    assert len(extra["decode_time_arr"]) == usage.completion_tokens - 1
    assert all(t >= 0 for t in extra["decode_time_arr"])
    if completion_tokens is not None:
        assert usage.completion_tokens == completion_tokens


def stream_text(client, model, **kwargs):
    chunks = list(client.chat.completions.create(model=model, stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return chunks, text, finish


def wait_idle(engine, timeout=5.0):
    deadline = time.monotonic() + timeout
    while engine.has_unfinished() or engine.blocks.num_free != engine.blocks.num_blocks:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_paris(client, model):
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=FRANCE, temperature=0, max_tokens=16)
    c = raw.parse()
    assert "Paris" in c.choices[0].message.content
    assert c.choices[0].finish_reason == "stop"
    assert c.model == model and c.id.startswith("chatcmpl-")
    assert_usage(c.usage)
    assert raw.headers["x-request-id"].startswith("req_")
    assert "x-tandem-kv-bytes" not in raw.headers          # no KV handoff in-process


def test_streaming_agrees_with_non_streaming(client, model):
    kwargs = dict(messages=[{"role": "user", "content": "Name three colors."}], temperature=0,
                  max_tokens=12)
    whole = client.chat.completions.create(model=model, **kwargs)
    chunks, text, finish = stream_text(client, model, stream_options={"include_usage": True}, **kwargs)
    assert text == whole.choices[0].message.content
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert_usage(chunks[-1].usage, completion_tokens=whole.usage.completion_tokens)
    assert_usage(whole.usage)


def test_full_text_is_the_text_so_far(client, model):
    chunks, text, _ = stream_text(client, model, messages=FRANCE, temperature=0, max_tokens=12,
                                  extra_body={"fullTextEnabled": True})
    so_far, seen = "", 0
    for c in chunks:
        if c.choices and c.choices[0].delta.content:
            so_far += c.choices[0].delta.content
            assert c.model_extra["full_text"] == so_far
            seen += 1
    assert seen > 1 and so_far == text


def test_stop_strings(client, model):
    c = client.chat.completions.create(model=model, messages=FRANCE, temperature=0, max_tokens=16,
                                       stop=["Paris", "London"])
    content = c.choices[0].message.content
    assert "Paris" not in content and content.strip() and c.choices[0].finish_reason == "stop"
    _, text, finish = stream_text(client, model, messages=FRANCE, temperature=0, max_tokens=16,
                                  stop="Paris")
    assert text == content and finish == ["stop"]


def test_max_tokens_finishes_with_length(client, model):
    c = client.chat.completions.create(model=model, messages=FRANCE, temperature=0, max_tokens=3)
    assert c.choices[0].finish_reason == "length"
    assert_usage(c.usage, completion_tokens=3)
    assert len(c.usage.model_extra["decode_time_arr"]) == 2


def test_seed_makes_sampling_reproducible(client, model):
    kwargs = dict(model=model, messages=[{"role": "user", "content": "Tell me a story."}],
                  temperature=1.0, max_tokens=8, seed=1234, extra_body={"ignore_eos": True})
    first, second = (client.chat.completions.create(**kwargs) for _ in range(2))
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.usage.completion_tokens == 8


@pytest.mark.parametrize("case_body, status, param, code",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(base_url, model, case_body, status, param, code):
    kwargs = post_kwargs(case_body, model)
    r = httpx.post(f"{base_url}/v1/chat/completions", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == code and err["message"]
    assert err["type"] == "invalid_request_error"


def test_engine_refusals_are_400_naming_the_request_field(client, model):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=FRANCE, max_tokens=10**6)
    assert e.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x " * 9000}])
    assert e.value.param == "messages" and "context" in e.value.message


def test_service_still_answers_after_bad_inputs(client, model, base_url):
    assert httpx.get(f"{base_url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{base_url}/ready").status_code == 200
    assert [m.id for m in client.models.list().data] == [model]
    c = client.chat.completions.create(model=model, messages=FRANCE, temperature=0, max_tokens=4)
    assert c.choices[0].message.content


def test_disconnect_mid_stream_aborts_and_frees_kv(base_url, model, local_engine):
    body = {"model": model, "messages": FRANCE, "stream": True, "max_tokens": 2000, "ignore_eos": True}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{base_url}/v1/chat/completions", json=body) as r:
            events = (line for line in r.iter_lines() if line.startswith("data: "))
            for _ in range(4):
                next(events)
            assert local_engine.has_unfinished()
    assert wait_idle(local_engine), "the request kept running after the client left"


def test_disconnect_mid_completion_aborts_and_frees_kv(base_url, model, local_engine):
    body = {"model": model, "messages": FRANCE, "max_tokens": 2000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=1.0)
    assert wait_idle(local_engine), "the request kept running after the client left"

"""The gateway's HTTP behaviour over a scripted backend (no model): shapes, errors, probes, aborts."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
import redis.asyncio as aioredis

from gateway.app import create_app
from gateway.config import GatewaySettings
from gateway.responses.store import ResponseStore
from tandem.redis_server import EmbeddedRedis

from .bad_requests import CASES, post_kwargs
from .serving import serve
from .fakes import INTERNAL_ERROR, FakeBackend, endless, explode, fail_after, leaked, refuse, unavailable, words

MODEL = "tandem-test"
TIMEOUT_S = 2.0
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def backend():
    return FakeBackend()


@pytest.fixture(scope="module")
def base_url(backend):
    settings = GatewaySettings(served_model_name=MODEL, request_timeout_s=TIMEOUT_S,
                               debug_headers=True, test_hooks=True)   # both off: test_auth.py
    with serve(create_app(backend, settings)) as url:
        yield url


@pytest.fixture
def fake(backend):
    backend.reset()
    return backend


@pytest.fixture
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)


@pytest.fixture
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=10) as c:
        yield c


def wait_until(cond, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def assert_error(resp: httpx.Response, status: int, param: str | None, code: str | None = None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and err["param"] == param
    if code is not None:
        assert err["code"] == code
    assert resp.headers["x-request-id"].startswith("req_")
    return err


# -- success shapes ---------------------------------------------------------------------------------
def test_non_streaming_completion_shape_usage_and_headers(client, fake):
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HI)
    c = raw.parse()
    assert c.id.startswith("chatcmpl-") and c.object == "chat.completion" and c.model == MODEL
    assert c.choices[0].message.role == "assistant"
    assert c.choices[0].message.content == "Hello world!"
    assert c.choices[0].finish_reason == "stop"
    u = c.usage.model_extra
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (5, 3, 8)
    assert u["prefill_time"] > 0 and len(u["decode_time_arr"]) == 2
    assert all(t >= 0 for t in u["decode_time_arr"])
    h = raw.headers
    assert h["x-request-id"] == f"req_{c.id.removeprefix('chatcmpl-')}"
    assert (h["x-tandem-prefill-worker"], h["x-tandem-decode-worker"]) == ("prefill-0", "decode-1")
    assert (h["x-tandem-prefill-pid"], h["x-tandem-decode-pid"], h["x-tandem-kv-bytes"]) == \
        ("101", "202", "4096")
    assert fake.closed == [c.id]


def test_streaming_event_order_with_usage(client, fake):
    fake.script = words("Hello", "", " world", "!", delay=0.01)
    chunks = list(client.chat.completions.create(model=MODEL, messages=HI, stream=True,
                                                 stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert contents == ["Hello", " world", "!"]          # the empty delta is not sent
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (5, 4, 9)
    assert len(usage.model_extra["decode_time_arr"]) == 3
    assert usage.model_extra["prefill_time"] >= 0.01
    assert all(t >= 0.005 for t in usage.model_extra["decode_time_arr"])


def test_streaming_raw_wire_format(http, fake):
    with http.stream("POST", "/v1/chat/completions",
                     json={"model": MODEL, "messages": HI, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert '"usage"' not in "".join(lines)                 # only with include_usage
    assert '"full_text"' not in "".join(lines)             # default off


@pytest.mark.parametrize("default, requested, expect", [
    (False, True, True), (True, None, True), (True, False, False), (False, None, False)])
def test_full_text_follows_request_then_server_default(fake, default, requested, expect):
    settings = GatewaySettings(served_model_name=MODEL, full_text_enabled_default=default)
    extra = {} if requested is None else {"fullTextEnabled": requested}
    with serve(create_app(fake, settings)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        chunks = list(client.chat.completions.create(model=MODEL, messages=HI, stream=True,
                                                     extra_body=extra))
    so_far = ""
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == 3
    for c in content_chunks:
        so_far += c.choices[0].delta.content
        assert (c.model_extra.get("full_text") == so_far) if expect else "full_text" not in c.model_extra


def test_request_fields_become_generate_params(client, fake):
    client.chat.completions.create(
        model=MODEL, max_completion_tokens=7, temperature=0.5, top_p=0.9, seed=42, stop="\n",
        user="u-1", n=1, presence_penalty=0, logprobs=False, response_format={"type": "text"},
        messages=[{"role": "developer", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "text", "text": "a"},
                                               {"type": "text", "text": "b"}]}],
        extra_body={"top_k": 3, "ignore_eos": True})
    assert fake.prompts[-1] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "a\nb"}]
    s = fake.params[-1].sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.seed, s.stop, s.ignore_eos) == \
        (7, 0.5, 0.9, 3, 42, ("\n",), True)
    assert fake.params[-1].test_corrupt_kv is False


def test_sampling_defaults(client, fake):
    client.chat.completions.create(model=MODEL, messages=HI)
    s = fake.params[-1].sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.seed, s.stop, s.ignore_eos) == \
        (None, 1.0, 1.0, 0, None, (), False)


def test_corrupt_kv_test_hook_header(client, http, fake):
    client.chat.completions.create(model=MODEL, messages=HI,
                                   extra_headers={"x-tandem-test-corrupt-kv": "1"})
    assert fake.params[-1].test_corrupt_kv is True
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI},
                  headers={"x-tandem-test-corrupt-kv": "maybe"})
    assert_error(r, 400, "x-tandem-test-corrupt-kv")
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI},
                  headers={"x-tandem-test-other": "1"})
    assert_error(r, 400, "x-tandem-test-other", "unknown_parameter")


# -- client errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case_body, status, param, code",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_gets_openai_error(http, fake, case_body, status, param, code):
    kwargs = post_kwargs(case_body, MODEL)
    assert_error(http.post("/v1/chat/completions", **kwargs), status, param, code)
    assert fake.params == []                                # nothing reached the backend


def test_backend_refusal_is_400_naming_its_field(client, fake):
    fake.script = refuse("max_tokens", "max_tokens 100 + 5 prompt tokens exceeds the context")
    with pytest.raises(openai.BadRequestError) as e:     # a worker's own check (another context)
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=100)
    assert e.value.status_code == 400 and e.value.param == "max_tokens"
    assert "exceeds the context" in e.value.message


def test_prompt_refusal_names_messages(client, fake):
    fake.script = refuse("prompt", "the prompt has 9000 tokens; this model's context is 8192 tokens")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=HI)
    assert e.value.param == "messages"


def test_chat_template_refusal_is_400(client, fake):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "REFUSE"}])
    assert e.value.param == "messages[0].content"


def test_unknown_model_is_404(client, fake):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=HI)
    assert e.value.code == "model_not_found" and e.value.param == "model"


def test_unknown_route_and_wrong_method(http):
    err = assert_error(http.post("/v1/nope", json={}), 404, None, "unknown_url")
    assert "/v1/nope" in err["message"]
    assert_error(http.get("/v1/chat/completions"), 405, None)


# -- server-side failures ---------------------------------------------------------------------------
def test_worker_failure_before_first_token_is_502(client, http, fake):
    fake.script = fail_after()
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, "stream": True})
    err = assert_error(r, 502, None, "worker_error")
    assert err["type"] == "server_error" and "worker failed" in err["message"] and not leaked(r.text)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL, messages=HI)


@pytest.mark.parametrize("stream", [False, True])
def test_no_worker_is_503(http, fake, stream):
    fake.script = unavailable(INTERNAL_ERROR)
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, "stream": stream})
    err = assert_error(r, 503, None, "backend_unavailable")
    assert "No worker could take" in err["message"] and err["type"] == "server_error"
    assert not leaked(r.text)
    assert len(fake.closed) == 1


def test_worker_failure_mid_stream_ends_stream_with_error_event(client, fake):
    fake.script = fail_after("Hel", "lo")
    got = []
    with pytest.raises(openai.APIError) as e:
        for chunk in client.chat.completions.create(model=MODEL, messages=HI, stream=True):
            got += [chunk.choices[0].delta.content] if chunk.choices else []
    assert got == ["", "Hel", "lo"]
    assert "worker failed" in e.value.message and not leaked(str(e.value.body))
    deadline = time.monotonic() + 5   # the server closes the backend stream just after the last event
    while len(fake.closed) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(fake.closed) == 1


def test_a_stream_failing_mid_way_sends_the_usage_so_far_before_the_error(client, fake):
    fake.script = fail_after("Hel", "lo")
    chunks = []
    with pytest.raises(openai.APIError, match="worker failed") as err:
        for chunk in client.chat.completions.create(model=MODEL, messages=HI, stream=True,
                                                    stream_options={"include_usage": True}):
            chunks.append(chunk)
    assert not leaked(str(err.value))          # the worker's own text stays in the logs
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == 2 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + 2 and len(usage.decode_time_arr) == 1


def test_worker_failure_mid_completion_is_502(http, fake):
    fake.script = fail_after("Hel", "lo")
    assert_error(http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI}),
                 502, None, "worker_error")


def test_unexpected_exception_is_500_without_internals(http, fake):
    fake.script = explode("secret detail at /srv/tandem/worker.py line 7")
    for stream in (False, True):
        r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, "stream": stream})
        err = assert_error(r, 500, None, "server_error")
        assert "secret" not in r.text and "Traceback" not in r.text and ".py" not in r.text
        assert err["type"] == "server_error"
    assert http.get("/health").status_code == 200


def test_request_timeout_is_504_and_aborts(http, fake):
    fake.script = endless(delay=None)
    t0 = time.monotonic()
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI})
    assert TIMEOUT_S <= time.monotonic() - t0 < TIMEOUT_S + 2
    assert_error(r, 504, None, "timeout")
    assert r.headers["x-should-retry"] == "false"
    assert len(fake.closed) == 1


def test_timeout_mid_stream_ends_with_error_event(client, fake):
    fake.script = endless(delay=0.3)
    with pytest.raises(openai.APIError) as e:
        for _ in client.chat.completions.create(model=MODEL, messages=HI, stream=True):
            pass
    assert "did not finish within" in e.value.message
    assert wait_until(lambda: len(fake.closed) == 1)


# -- client disconnects abort the request ------------------------------------------------------------
def test_disconnect_mid_stream_closes_backend_stream(base_url, fake):
    fake.script = endless(delay=0.02)
    with httpx.Client(base_url=base_url, timeout=10) as http:
        with http.stream("POST", "/v1/chat/completions",
                         json={"model": MODEL, "messages": HI, "stream": True}) as r:
            lines = r.iter_lines()
            assert [next(lines) for _ in range(6)][-2].startswith("data: ")
    assert wait_until(lambda: len(fake.closed) == 1)


@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_before_first_token_closes_backend_stream(base_url, fake, stream):
    fake.script = endless(delay=None)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base_url}/v1/chat/completions", timeout=0.3,
                   json={"model": MODEL, "messages": HI, "stream": stream})
    assert wait_until(lambda: len(fake.closed) == 1, timeout=TIMEOUT_S / 2)


def test_disconnect_mid_completion_closes_backend_stream(base_url, fake):
    fake.script = endless(delay=0.02)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base_url}/v1/chat/completions", timeout=0.3,
                   json={"model": MODEL, "messages": HI})
    assert wait_until(lambda: len(fake.closed) == 1, timeout=TIMEOUT_S / 2)


# -- probes and the model list ----------------------------------------------------------------------
def test_health_touches_nothing(http, fake):
    fake.ready_result = lambda: (_ for _ in ()).throw(AssertionError("health must not call ready"))
    r = http.get("/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


def test_ready_follows_backend(http, fake):
    r = http.get("/ready")
    assert (r.status_code, r.json()["status"]) == (200, "ready")
    fake.ready_result = lambda: (False, "no live decode worker")
    r = http.get("/ready")
    assert (r.status_code, r.json()["reason"]) == (503, "no live decode worker")


def test_ready_lists_a_store_it_cannot_reach_as_degraded_but_stays_ready(http, fake, tmp_path):
    r = http.get("/ready")                    # this app has no response store at all
    assert r.status_code == 200 and "no response store" in r.json()["degraded"]["store"]
    with EmbeddedRedis(tmp_path / "redis") as server:
        store = ResponseStore(aioredis.Redis.from_url(server.url, socket_timeout=0.5))
        with serve(create_app(fake, GatewaySettings(served_model_name=MODEL), store)) as url:
            assert httpx.get(f"{url}/ready").json()["degraded"] == {}
            server.stop()
            r = httpx.get(f"{url}/ready", timeout=10)
    assert r.status_code == 200 and "unavailable" in r.json()["degraded"]["store"]


def test_ready_is_503_when_the_check_fails_or_hangs(base_url, fake):
    fake.ready_result = lambda: (_ for _ in ()).throw(ConnectionError("redis down"))
    assert httpx.get(f"{base_url}/ready").status_code == 503
    settings = GatewaySettings(served_model_name=MODEL, ready_timeout_s=0.1)
    fake.ready_result = lambda: asyncio.sleep(10, (True, "late"))
    with serve(create_app(fake, settings)) as url:
        r = httpx.get(f"{url}/ready")
    assert r.status_code == 503 and "longer than" in r.json()["reason"]


def test_models_list_and_retrieve(client, fake):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].object == "model"
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_settings_are_validated():
    with pytest.raises(ValueError):
        GatewaySettings(served_model_name="")
    with pytest.raises(ValueError):
        GatewaySettings(served_model_name="m", request_timeout_s=0)


def test_stop_null_means_no_stop(client, fake):
    fake.script = words("a", "b")
    r = client.chat.completions.create(model=MODEL, messages=HI, stop=None)
    assert r.choices[0].message.content == "ab" and fake.params[0].sampling.stop == ()


def test_an_oversized_body_is_413_at_once_and_the_server_stays_responsive(backend):
    settings = GatewaySettings(served_model_name=MODEL, max_body_bytes=1 << 20)
    big = {"model": MODEL, "messages": [{"role": "user", "content": "word " * 4_000_000}]}  # 20 MB
    with serve(create_app(backend, settings)) as url, httpx.Client(base_url=url, timeout=30) as http:
        start = time.monotonic()
        r = http.post("/v1/chat/completions", json=big)
        assert_error(r, 413, None, "request_too_large")
        assert time.monotonic() - start < 5.0                 # refused, not parsed or tokenized
        assert http.get("/health").status_code == 200
        ok = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI})
        assert ok.status_code != 413

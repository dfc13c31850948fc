"""Rate limits per API key (gateway/ratelimit.py): requests and tokens per minute in a real Redis,
shared by two gateway replicas; 429 with Retry-After and the x-ratelimit-* headers."""

import contextlib
import uuid

import httpx
import pytest

from gateway.auth import ApiKey, KeyRing, digest, parse_env_keys
from gateway.ratelimit import RateLimits

from .fakes import FakeBackend, words
from .responses_support import MODEL, assert_error, gateway, redis_store, reset, wait_until

KEY, OTHER = "sk-limited-0123456789", "sk-other-0123456789"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with redis_store(tmp_path_factory) as store:
        yield store


@pytest.fixture
def backend():
    backend = reset(FakeBackend())
    backend.script = words("Hi", "!", prompt_tokens=5)     # 7 tokens a request
    return backend


@contextlib.contextmanager
def replicas(backend, store, n: int, **limits):
    """``n`` gateways over one Redis and one rate-limit namespace; yields httpx clients as KEY."""
    keys, namespace = parse_env_keys(f"{KEY}=a,{OTHER}=b"), uuid.uuid4().hex
    with contextlib.ExitStack() as stack:
        clients = []
        for _ in range(n):
            url = stack.enter_context(gateway(backend, store, keys=KeyRing(keys), limits=RateLimits(
                store.url, namespace=namespace, **limits)))
            clients.append(stack.enter_context(httpx.Client(
                base_url=url, headers={"authorization": f"Bearer {KEY}"}, timeout=10)))
        yield clients


def ask(client: httpx.Client, key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return client.post("/v1/responses", json={"model": MODEL, "input": "Hi", "store": False},
                       headers=headers)


def test_requests_per_minute_is_shared_by_replicas(backend, store):
    with replicas(backend, store, 2, requests_per_minute=3) as (one, two):
        first = ask(one)
        assert first.status_code == 200, first.text
        assert first.headers["x-ratelimit-limit-requests"] == "3"
        assert first.headers["x-ratelimit-remaining-requests"] == "2"
        assert ask(two).status_code == 200 and ask(one).status_code == 200
        refused = ask(two)
        assert_error(refused, 429, None, "rate_limit_exceeded")
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
        assert ask(one, OTHER).status_code == 200        # another key has its own window
        assert one.get("/health").status_code == 200      # probes are never limited


def test_tokens_per_minute_counts_what_generations_used(backend, store):
    with replicas(backend, store, 2, tokens_per_minute=10) as (one, two):
        assert ask(one).status_code == 200                # 7 of 10 tokens
        assert wait_until(lambda: ask(two).status_code == 429)   # once the 7 are counted
        refused = ask(two)
        assert_error(refused, 429, None, "rate_limit_exceeded")
        assert refused.headers["x-ratelimit-limit-tokens"] == "10"
        assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
        assert "retry-after" in refused.headers


def test_a_keys_own_limit_wins_over_the_default(backend, store):
    own = ApiKey(digest(KEY), "a", requests_per_minute=1)
    limits = RateLimits(store.url, requests_per_minute=100, namespace=uuid.uuid4().hex)
    assert limits.limits_of(own) == (1, 0)
    with gateway(backend, store, keys=KeyRing((own,)), limits=limits) as url, \
            httpx.Client(base_url=url, timeout=10) as http:
        assert ask(http, KEY).status_code == 200
        assert_error(ask(http, KEY), 429, None, "rate_limit_exceeded")


def test_no_limits_means_no_headers(backend, store):
    with replicas(backend, store, 1) as (one,):
        resp = ask(one)
        assert resp.status_code == 200 and not any(h.startswith("x-ratelimit") for h in resp.headers)

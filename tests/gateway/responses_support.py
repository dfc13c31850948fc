"""What the Responses API tests over a scripted backend and a real Redis share: a real Redis with a
store, a gateway on uvicorn, and helpers that check shapes, errors and the event order. Response
ids are ``resp_`` + the request id, so a test can find what a failed request stored (nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any, Iterator

import httpx
import openai
import redis
import redis.asyncio as aioredis

from gateway.app import create_app
from gateway.config import GatewaySettings
from gateway.responses.store import ResponseStore
from tandem.redis_server import EmbeddedRedis

from .fakes import FakeBackend
from .serving import serve

MODEL = "tandem-test"
TIMEOUT_S = 5.0
TTL_S = 3600
NAMESPACE = "rtest"


# -- what each test module's fixtures are made of -------------------------------------------------
class SyncStore:
    """The test's side of a gateway's store: ``ResponseStore`` calls run to completion here (each on
    a private event loop and connection), ``client`` is a plain redis client on the same server,
    and ``for_app()`` makes the async store a gateway uses."""

    def __init__(self, url: str, namespace: str = NAMESPACE, ttl_seconds: int = TTL_S, **client_kw):
        self.url, self.namespace, self.ttl_seconds = url, namespace, ttl_seconds
        self._client_kw = {"socket_timeout": 2, "socket_connect_timeout": 2, **client_kw}
        self.client = redis.Redis.from_url(url, socket_timeout=2)

    def for_app(self) -> ResponseStore:
        return ResponseStore(aioredis.Redis.from_url(self.url, **self._client_kw),
                             namespace=self.namespace, ttl_seconds=self.ttl_seconds)

    def ttl(self, response_id: str) -> int:
        return self.client.ttl(f"{self.namespace}:resp:{{{response_id}}}")

    def append_event(self, response_id: str, event: dict[str, Any]) -> None:
        self._run("append_events", response_id, [event])

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: self._run(name, *args, **kwargs)

    def _run(self, name: str, *args, **kwargs):
        async def call():
            store = self.for_app()
            try:
                return await getattr(store, name)(*args, **kwargs)
            finally:
                await store._client.aclose()
        return asyncio.run(call())


@contextlib.contextmanager
def redis_store(tmp_path_factory) -> Iterator[SyncStore]:
    """A real redis-server (own data directory) and a store on it."""
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield SyncStore(server.url)


def settings(**overrides) -> GatewaySettings:
    return GatewaySettings(**{"served_model_name": MODEL, "request_timeout_s": TIMEOUT_S, **overrides})


@contextlib.contextmanager
def gateway(backend: FakeBackend, store: SyncStore | None, keys=None, limits=None,
            **overrides) -> Iterator[str]:
    """A gateway over ``backend`` and ``store`` (API ``keys``: a ``KeyRing``; ``limits``:
    ``RateLimits``) under uvicorn; yields its base URL."""
    app_store = store.for_app() if store is not None else None
    with serve(create_app(backend, settings(**overrides), app_store, keys=keys, limits=limits)) as url:
        yield url


def reset(backend: FakeBackend) -> FakeBackend:
    backend.reset()
    backend.max_model_len = 8192
    return backend


def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)


# -- helpers ----------------------------------------------------------------------------------------
def wait_until(cond, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def create(http, **body):
    return http.post("/v1/responses", json={"model": MODEL, "input": "Hi", **body})


def assert_error(resp: httpx.Response, status: int, param: str | None, code: str | None = None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


def sse_events(resp: httpx.Response) -> list[dict]:
    """Parse a raw SSE body; check each block has a matching ``event:`` line and no ``[DONE]``."""
    events = []
    for block in resp.text.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        event = json.loads(lines["data"])
        assert lines["event"] == event["type"] and "error" not in event
        events.append(event)
    return events


def stored_id(resp: httpx.Response) -> str:
    """The id the gateway gave (or would have given) the response of this request."""
    return "resp_" + resp.headers["x-request-id"].removeprefix("req_")


def assert_usage(usage: dict, output_tokens: int):
    assert usage["output_tokens"] == output_tokens
    assert usage["total_tokens"] == usage["input_tokens"] + output_tokens
    assert usage["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}
    assert usage["prefill_time"] > 0 and len(usage["decode_time_arr"]) == output_tokens - 1


PLAIN_ORDER = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added"]
CLOSING = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


def check_stream(events: list[dict], terminal: str, deltas: int) -> dict:
    """§2.3 order, gapless sequence numbers, one id, text done = the deltas; the final Response."""
    kinds = [e["type"] for e in events]
    assert kinds == PLAIN_ORDER + ["response.output_text.delta"] * deltas + CLOSING + [terminal]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    lifecycle = [e["response"] for e in events if "response" in e]
    assert len({r["id"] for r in lifecycle}) == 1
    assert lifecycle[0]["status"] in ("in_progress", "queued") and lifecycle[0]["output"] == []
    assert lifecycle[0]["usage"] is None
    item_id = events[2]["item"]["id"]
    assert all(e["item_id"] == item_id for e in events if "item_id" in e)
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert events[-4]["text"] == text and events[-3]["part"]["text"] == text
    final = events[-1]["response"]
    assert final["output"] == [events[-2]["item"]]
    return final



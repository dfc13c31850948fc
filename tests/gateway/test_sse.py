"""Server-sent events: keep-alive comments on a quiet stream, and what the SDK makes of them."""

import time

import httpx
import pytest

from .fakes import endless, words
from .responses_support import MODEL, gateway, reset, sdk

KEEPALIVE_S = 0.3


@pytest.fixture(scope="module")
def quiet_url(backend, store):
    with gateway(backend, store, sse_keepalive_s=KEEPALIVE_S, request_timeout_s=30) as url:
        yield url


def test_an_idle_follow_stream_gets_keepalives_at_the_interval(quiet_url, backend):
    fake = reset(backend)
    fake.script = endless(None)          # a background response that produces nothing for now
    with httpx.Client(base_url=quiet_url, timeout=10) as http:
        rid = http.post("/v1/responses", json={"model": MODEL, "input": "Hi", "background": True}
                        ).json()["id"]
        pings, start = [], time.monotonic()
        with http.stream("GET", f"/v1/responses/{rid}", params={"stream": "true"}) as r:
            for line in r.iter_lines():
                if line.startswith(":"):
                    pings.append(time.monotonic() - start)
                if len(pings) == 4:
                    break
        http.post(f"/v1/responses/{rid}/cancel")
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert all(KEEPALIVE_S * 0.5 < g < KEEPALIVE_S * 3 for g in gaps), gaps


def test_keepalives_do_not_disturb_the_sdk(quiet_url, backend):
    fake = reset(backend)
    fake.script = words("a", "b", "c", delay=KEEPALIVE_S)   # pings between the tokens
    client = sdk(quiet_url)
    chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user",
                                                 "content": "Hi"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "abc"
    events = list(client.responses.create(model=MODEL, input="Hi", stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.output_text == "abc"

"""The Responses API through the disaggregated path: real processes, real Redis, the real model and
the official SDK (the session-wide ``tandem up`` of conftest.py)."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
import redis
from tests.gateway.responses_support import SyncStore

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"
PARIS = "What is the capital of France?"
TERMINAL = ("completed", "incomplete", "failed", "cancelled")
KV_BYTES_PER_TOKEN = 30 * 2 * 3 * 64 * 4   # layers x (K,V) x kv_heads x head_dim x fp32


def store_of(stack) -> SyncStore:
    """The store the gateway writes (same Redis, default namespace)."""
    return SyncStore(stack.redis_url, namespace="tandem", ttl_seconds=30 * 86400, socket_timeout=5)


def create(client, **kw):
    """A greedy response with small defaults (``PARIS``, 12 output tokens)."""
    kw = {"input": PARIS, "temperature": 0, "max_output_tokens": 12, **kw}
    return client.responses.create(model=MODEL, **kw)


def sse(resp: httpx.Response) -> list[dict]:
    events = []
    for block in resp.text.split("\n\n"):
        if block.strip():
            fields = dict(line.split(": ", 1) for line in block.split("\n"))
            event = json.loads(fields["data"])
            assert fields["event"] == event["type"] and "error" not in event
            events.append(event)
    return events


def check_order(events: list[dict], terminal: str) -> dict:
    """The exact order of reference §2.3, gapless sequence numbers, one response id; the final one."""
    kinds = [e["type"] for e in events]
    n = kinds.count("response.output_text.delta")
    assert n >= 1 and kinds == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", *["response.output_text.delta"] * n, "response.output_text.done",
        "response.content_part.done", "response.output_item.done", terminal]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert len({e["response"]["id"] for e in events if "response" in e}) == 1
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == text == events[-4]["text"]
    return final


def check_usage(usage: dict) -> None:
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    cached = usage["input_tokens_details"]["cached_tokens"]      # whole 16-token blocks, never all
    assert 0 <= cached < usage["input_tokens"] and cached % 16 == 0
    assert usage["output_tokens_details"]["reasoning_tokens"] == 0
    assert isinstance(usage["prefill_time"], float) and usage["prefill_time"] > 0
    assert len(usage["decode_time_arr"]) == usage["output_tokens"] - 1


def wait_status(client, rid, statuses=TERMINAL, timeout=120):
    deadline = time.monotonic() + timeout
    while (r := client.responses.retrieve(rid)).status not in statuses:
        assert time.monotonic() < deadline, f"{rid} still {r.status}"
        time.sleep(0.2)
    return r


def wait_idle(stack, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        statuses = stack.worker_status("prefill") + stack.worker_status("decode")
        if all(s.free_blocks == s.total_blocks and s.num_running == 0 and s.num_waiting == 0
               for s in statuses):
            return
        assert time.monotonic() < deadline, f"workers still busy: {statuses}"
        time.sleep(0.2)


# -- create -----------------------------------------------------------------------------------------
def test_create_string_and_items_through_prefill_and_decode(stack):
    client = stack.client()
    raw = client.responses.with_raw_response.create(model=MODEL, input=PARIS, temperature=0,
                                                    max_output_tokens=12)
    r = raw.parse()
    assert "Paris" in r.output_text and r.status in ("completed", "incomplete")
    check_usage(json.loads(raw.http_response.text)["usage"])
    moved = r.usage.input_tokens - int(raw.headers["x-tandem-kv-start-token"])
    assert int(raw.headers["x-tandem-kv-bytes"]) == moved * KV_BYTES_PER_TOKEN
    assert raw.headers["x-tandem-prefill-pid"] != raw.headers["x-tandem-decode-pid"]
    items = create(client, instructions="Answer in one word.", input=[
        {"role": "developer", "content": "You are a geography tutor."},
        {"role": "user", "content": [{"type": "input_text", "text": PARIS}]}])
    assert "Paris" in items.output_text and items.instructions == "Answer in one word."
    assert store_of(stack).get(items.id)["status"] == items.status


# -- streaming --------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_output_tokens, terminal", [(40, "response.completed"),
                                                         (4, "response.incomplete")])
def test_raw_sse_event_order_and_invariants(stack, max_output_tokens, terminal):
    body = {"model": MODEL, "input": PARIS, "temperature": 0, "stream": True,
            "max_output_tokens": max_output_tokens}
    with httpx.stream("POST", f"{stack.base_url}/responses", json=body, timeout=120) as r:
        r.read()
    assert r.status_code == 200 and "[DONE]" not in r.text
    final = check_order(sse(r), terminal)
    check_usage(final["usage"])
    if terminal == "response.incomplete":
        assert final["incomplete_details"] == {"reason": "max_output_tokens"}
        assert final["usage"]["output_tokens"] == 4
    stored = stack.client().responses.retrieve(final["id"])
    assert stored.status == final["status"] and stored.output_text == final["output"][0]["content"][0]["text"]


def test_stream_helper_agrees_with_non_streaming(stack):
    client = stack.client()
    whole = create(client)
    with client.responses.stream(model=MODEL, input=PARIS, temperature=0, max_output_tokens=12) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == whole.output_text
    assert final.usage.output_tokens == whole.usage.output_tokens
    events = list(create(client, stream=True))
    assert events[0].type == "response.created" and events[-1].type.startswith("response.")


# -- retrieve, delete, input items ------------------------------------------------------------------
def test_retrieve_delete_and_input_items_pagination(stack):
    client = stack.client()
    texts = [f"Fact {i}: the sky is blue." for i in range(5)]
    r = create(client, input=[{"role": "user", "content": t} for t in texts], max_output_tokens=3)
    assert client.responses.retrieve(r.id).model_dump() == r.model_dump()
    listed = [i.content[0].text for i in client.responses.input_items.list(r.id, limit=2)]
    assert listed == texts[::-1]                                        # newest first, 3 pages
    assert client.responses.delete(r.id) is None
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.retrieve(r.id)
    assert e.value.body["param"] == "response_id"
    second = httpx.delete(f"{stack.base_url}/responses/{r.id}")
    assert second.status_code == 404 and second.json()["error"]["param"] == "response_id"


def test_three_turn_chain(stack):
    client = stack.client()
    turns = ["My name is Ada and I like tea.", "What do I like?", "What is my name?"]
    previous, responses = None, []
    for text in turns:
        r = create(client, input=text, previous_response_id=previous, max_output_tokens=10)
        if responses:   # the whole history is in the prompt: the last prompt, its answer, and more
            last = responses[-1]
            assert r.usage.input_tokens > last.usage.input_tokens + last.usage.output_tokens
        responses.append(r)
        previous = r.id
    items = list(client.responses.input_items.list(previous, order="asc"))
    assert [i.role for i in items] == ["user", "assistant", "user", "assistant", "user"]
    assert [items[0].content[0].text, items[2].content[0].text, items[4].content[0].text] == turns
    assert items[1].content[0].text == responses[0].output_text
    with pytest.raises(openai.NotFoundError) as e:
        create(client, input="Hi", previous_response_id="resp_does_not_exist")
    assert e.value.body["param"] == "previous_response_id"


# -- background, cancel, resume ---------------------------------------------------------------------
def test_background_resume_with_starting_after(stack):
    client = stack.client()
    r = create(client, background=True, stream=False, max_output_tokens=20)
    assert r.status in ("queued", "in_progress") and r.background
    done = wait_status(client, r.id)
    everything = list(client.responses.retrieve(r.id, stream=True))
    assert everything[0].type == "response.created" and everything[-1].response.output_text == done.output_text
    resumed = list(client.responses.retrieve(r.id, stream=True, starting_after=4))
    assert [e.sequence_number for e in resumed] == list(range(5, len(everything)))
    with client.responses.stream(response_id=r.id) as stream:
        assert stream.get_final_response().output_text == done.output_text


def test_background_cancel_aborts_on_the_workers(stack):
    wait_idle(stack)
    client = stack.client()
    r = create(client, input="Write a very long story.", background=True, max_output_tokens=2000,
               extra_body={"ignore_eos": True})
    seen = 0
    for event in client.responses.retrieve(r.id, stream=True):
        seen += event.type == "response.output_text.delta"
        if seen >= 3:
            break
    assert any(s.num_running for s in stack.worker_status("decode"))
    cancelled = client.responses.cancel(r.id)
    assert cancelled.status == "cancelled"
    wait_idle(stack)
    after = client.responses.retrieve(r.id)
    assert after.status == "cancelled" and 3 <= after.usage.output_tokens < 2000
    assert client.responses.cancel(r.id).status == "cancelled"


def test_stored_records_keep_their_ttl(stack):
    store, client = store_of(stack), stack.client()
    r = create(client, background=True, max_output_tokens=30)
    assert 29 * 86400 < store.ttl(r.id) <= 30 * 86400                 # set at create
    wait_status(client, r.id)
    assert 29 * 86400 < store.ttl(r.id) <= 30 * 86400                 # kept at completion


# -- several gateways, one Redis; Redis restarted ---------------------------------------------------
@pytest.fixture(scope="module")
def second_gateway(stack):
    proc, base = stack.start_gateway()
    yield openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
    proc.terminate()
    proc.wait(30)


def test_two_gateway_replicas_share_one_redis(stack, second_gateway):
    a, b = stack.client(), second_gateway
    r1 = create(a, input="My name is Ada.", max_output_tokens=8)
    assert b.responses.retrieve(r1.id).output_text == r1.output_text
    r2 = create(b, input="What is my name?", previous_response_id=r1.id, max_output_tokens=8)
    assert r2.usage.input_tokens > r1.usage.input_tokens
    assert len(list(a.responses.input_items.list(r2.id))) == 3
    bg = create(a, input="Write a very long story.", background=True, max_output_tokens=2000,
                extra_body={"ignore_eos": True})
    next(e for e in b.responses.retrieve(bg.id, stream=True) if e.type == "response.output_text.delta")
    assert b.responses.cancel(bg.id).status == "cancelled"                # runs on A, cancelled on B
    wait_idle(stack)
    b.responses.delete(r1.id)
    with pytest.raises(openai.NotFoundError):
        a.responses.retrieve(r1.id)


def test_responses_survive_a_redis_restart(stack):
    client = stack.client()
    r = create(client, max_output_tokens=8)
    time.sleep(1.1)                                      # appendfsync everysec
    admin = redis.Redis.from_url(stack.redis_url, socket_timeout=5)
    run_id = admin.info("server")["run_id"]
    admin.shutdown()
    deadline, outage = time.monotonic() + 20, []
    while True:                       # during the outage: 503, never 404, never a made-up success
        try:
            got = client.responses.retrieve(r.id)
            break
        except openai.InternalServerError as e:
            assert e.status_code == 503 and e.body["code"] == "store_unavailable"
            outage.append(e)
        assert time.monotonic() < deadline, "Redis did not come back"
        time.sleep(0.3)
    assert admin.info("server")["run_id"] != run_id          # it really is a new Redis process
    assert got.model_dump() == r.model_dump()
    assert 29 * 86400 < store_of(stack).ttl(r.id) <= 30 * 86400
    deadline = time.monotonic() + 30
    while httpx.get(stack.base_url.removesuffix("/v1") + "/ready").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert "Paris" in create(client).output_text                        # still serving


# -- bad input --------------------------------------------------------------------------------------
IMAGE = [{"role": "user", "content": [{"type": "input_text", "text": "What is this?"},
                                      {"type": "input_image", "image_url": "https://x/cat.png",
                                       "detail": "auto"}]}]


@pytest.mark.parametrize("body, status, param", [
    ({"input": "Hi", "temperature": 5}, 400, "temperature"),
    ({"input": "Hi", "max_output_tokens": 0}, 400, "max_output_tokens"),
    ({"input": "Hi", "bogus_field": 1}, 400, "bogus_field"),
    ({"input": "Hi", "tools": [{"type": "function", "name": "f"}, {"type": "web_search"}]}, 400,
     "tools[1].type"),
    ({"input": IMAGE}, 400, "input[0].content"),
    ({"input": "Hi", "metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata"),
    ({"input": "Hi", "background": True, "store": False}, 400, "background"),
    ({"input": "word " * 9000}, 400, "input"),
    ({"input": "Hi", "previous_response_id": "resp_missing"}, 404, "previous_response_id"),
    ({"input": "Hi", "model": "gpt-4o"}, 404, "model"),
])
def test_bad_input_gets_documented_error_and_service_continues(stack, body, status, param):
    r = httpx.post(f"{stack.base_url}/responses", json={"model": MODEL, **body}, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param, err
    if body.get("input") is IMAGE:
        assert "text-only" in err["message"]
    ok = httpx.post(f"{stack.base_url}/responses", timeout=60,
                    json={"model": MODEL, "input": "Hi", "max_output_tokens": 3})
    assert ok.status_code == 200 and ok.json()["status"] in ("completed", "incomplete")

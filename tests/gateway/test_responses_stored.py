"""The Responses API over a scripted backend and a real Redis: stored responses (retrieve, delete,
input items, previous_response_id, truncation), background runs, cancel, resume, Redis down, and
two gateway replicas on one Redis."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from redis.backoff import NoBackoff
from redis.asyncio.retry import Retry

from gateway.responses import stored
from gateway.responses.models import ResponseCreateRequest
from gateway.responses.object import new_response
from tandem.redis_server import free_port

from .fakes import INTERNAL_ERROR, endless, leaked, unavailable, words
from .responses_support import (SyncStore, MODEL, NAMESPACE, TTL_S, assert_error, check_stream, create, gateway, reset, sdk, sse_events, wait_until)





# -- retrieve, delete, input items ------------------------------------------------------------------
def test_retrieve_and_delete(client, http, fake):
    r = client.responses.create(model=MODEL, input="Hi")
    got = client.responses.retrieve(r.id)
    assert got.model_dump() == r.model_dump()
    d = http.delete(f"/v1/responses/{r.id}")
    assert d.status_code == 200 and d.json() == {"id": r.id, "object": "response", "deleted": True}
    assert_error(http.delete(f"/v1/responses/{r.id}"), 404, "response_id")
    err = assert_error(http.get(f"/v1/responses/{r.id}"), 404, "response_id")
    assert r.id in err["message"]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    assert_error(http.get("/v1/responses/abc"), 400, "response_id")
    assert_error(http.get(f"/v1/responses/{r.id}", params={"include[]": "x"}), 400, "include")
    assert_error(http.get(f"/v1/responses/{r.id}", params={"bogus": "1"}), 400, "bogus")


def test_input_items_pagination(client, http, fake):
    texts = [f"m{i}" for i in range(5)]
    r = client.responses.create(model=MODEL, input=[{"role": "user", "content": t} for t in texts])
    page = client.responses.input_items.list(r.id, limit=2)
    assert [i.content[0].text for i in page.data] == ["m4", "m3"] and page.has_more
    assert page.first_id == page.data[0].id and page.last_id == page.data[1].id
    every = [i.content[0].text for i in client.responses.input_items.list(r.id, limit=2)]
    assert every == texts[::-1]                                            # auto-pagination
    asc = [i.content[0].text for i in client.responses.input_items.list(r.id, order="asc")]
    assert asc == texts
    body = http.get(f"/v1/responses/{r.id}/input_items", params={"after": page.last_id}).json()
    assert [i["content"][0]["text"] for i in body["data"]] == ["m2", "m1", "m0"]
    assert body["object"] == "list" and body["has_more"] is False
    assert_error(http.get(f"/v1/responses/{r.id}/input_items", params={"limit": 0}), 400, "limit")
    assert_error(http.get(f"/v1/responses/{r.id}/input_items", params={"order": "up"}), 400, "order")
    assert_error(http.get(f"/v1/responses/{r.id}/input_items", params={"after": "msg_x"}), 400,
                 "after")
    assert_error(http.get("/v1/responses/resp_nope/input_items"), 404, "response_id")


# -- previous_response_id ---------------------------------------------------------------------------
def test_three_turn_chain_rebuilds_history(client, fake):
    fake.script = words("A1")
    r1 = client.responses.create(model=MODEL, input="Q1", instructions="Sys one.")
    fake.script = words("A2")
    r2 = client.responses.create(model=MODEL, input="Q2", previous_response_id=r1.id)
    fake.script = words("A3")
    r3 = client.responses.create(model=MODEL, input=[{"role": "user", "content": "Q3"}],
                                 previous_response_id=r2.id, instructions="Sys three.")
    assert fake.prompts[-2] == [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                                {"role": "user", "content": "Q2"}]      # instructions not inherited
    assert fake.prompts[-1][0] == {"role": "system", "content": "Sys three."}
    assert [m["content"] for m in fake.prompts[-1][1:]] == ["Q1", "A1", "Q2", "A2", "Q3"]
    assert len(fake.params[-1].prompt_token_ids) == sum(len(m["content"]) + 1 for m in fake.prompts[-1])
    assert r3.previous_response_id == r2.id
    items = list(client.responses.input_items.list(r3.id, order="asc"))
    assert [(i.role, i.content[0].text) for i in items] == [
        ("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2"), ("user", "Q3")]
    assert items[1].id == r1.output[0].id


def test_previous_response_id_missing_deleted_or_malformed(client, http, fake):
    err = assert_error(create(http, previous_response_id="resp_missing"), 404, "previous_response_id")
    assert "resp_missing" in err["message"]
    r = client.responses.create(model=MODEL, input="Hi")
    client.responses.delete(r.id)
    assert_error(create(http, previous_response_id=r.id), 404, "previous_response_id")
    assert_error(create(http, previous_response_id="chatcmpl-1"), 400, "previous_response_id")
    assert create(http).status_code == 200


def test_truncation_disabled_refuses_and_auto_drops_oldest_turns(client, http, fake):
    fake.script = words("x" * 30)
    r1 = client.responses.create(model=MODEL, input=[{"role": "system", "content": "S"},
                                                     {"role": "user", "content": "q" * 30}])
    r2 = client.responses.create(model=MODEL, input="w" * 30, previous_response_id=r1.id)
    fake.max_model_len = 110                        # the chain is S, q, x, w, x + the new turn
    body = {"input": "n" * 30, "previous_response_id": r2.id, "max_output_tokens": 10}
    err = assert_error(create(http, **body), 400, "input", "context_length_exceeded")
    assert "110" in err["message"]
    r3 = client.responses.create(model=MODEL, truncation="auto", **body)
    assert r3.status == "completed" and r3.truncation == "auto"
    assert [m["content"][0] for m in fake.prompts[-1]] == ["S", "w", "x", "n"]
    assert len(list(client.responses.input_items.list(r3.id))) == 6   # all items kept in the record
    fake.max_model_len = 40                         # even the newest turn alone does not fit
    assert_error(create(http, truncation="auto", **body), 400, "input", "context_length_exceeded")



# -- background, cancel, resume ---------------------------------------------------------------------
def wait_status(client, rid, statuses=("completed", "incomplete", "failed", "cancelled")):
    assert wait_until(lambda: client.responses.retrieve(rid).status in statuses, timeout=5)
    return client.responses.retrieve(rid)


def test_background_returns_at_once_and_finishes(client, fake, store):
    fake.script = words("Hello", " world", "!", delay=0.05)
    r = client.responses.create(model=MODEL, input="Hi", background=True)
    assert r.status in ("queued", "in_progress") and r.background is True and r.output == []
    done = wait_status(client, r.id)
    assert done.status == "completed" and done.output_text == "Hello world!"
    check_stream(store.events_after(r.id, -1), "response.completed", deltas=3)
    assert store.events_after(r.id, -1)[0]["response"]["status"] == "queued"
    assert 0 < store.ttl(r.id) <= TTL_S


def test_background_failure_before_first_token_is_a_failed_response(client, fake, store):
    fake.script = unavailable(INTERNAL_ERROR)
    r = client.responses.create(model=MODEL, input="Hi", background=True)
    done = wait_status(client, r.id)
    assert done.status == "failed" and "No worker could take" in done.error.message
    assert not leaked(done.model_dump_json())
    assert done.error.code == "server_error" and done.output == []
    kinds = [e["type"] for e in store.events_after(r.id, -1)]
    assert kinds == ["response.created", "response.in_progress", "response.failed"]


def test_cancel_background_aborts_the_request(client, http, fake, store):
    fake.script = endless(0.02)
    r = client.responses.create(model=MODEL, input="Hi", background=True)
    assert wait_until(lambda: len(fake.params) == 1)
    cancelled = client.responses.cancel(r.id)
    assert cancelled.status == "cancelled" and cancelled.id == r.id
    assert wait_until(lambda: len(fake.closed) == 1)
    assert client.responses.retrieve(r.id).status == "cancelled"
    assert client.responses.cancel(r.id).status == "cancelled"          # again: returned as is
    kinds = [e["type"] for e in store.events_after(r.id, -1)]
    assert kinds[:2] == ["response.created", "response.in_progress"] and "response.completed" not in kinds


def test_delete_of_a_running_response_stops_it(client, http, fake, store):
    fake.script = endless(0.02)
    r = client.responses.create(model=MODEL, input="Hi", background=True)
    assert wait_until(lambda: len(fake.params) == 1)
    assert http.delete(f"/v1/responses/{r.id}").json()["deleted"] is True
    assert wait_until(lambda: len(fake.closed) == 1)
    assert store.get(r.id) is None and store.input_items(r.id) is None


def test_cancel_finished_synchronous_or_unknown(client, http, fake):
    fake.script = words("ok")
    bg = client.responses.create(model=MODEL, input="Hi", background=True)
    done = wait_status(client, bg.id)
    assert client.responses.cancel(bg.id).model_dump() == done.model_dump()   # unchanged
    sync = client.responses.create(model=MODEL, input="Hi")
    assert_error(http.post(f"/v1/responses/{sync.id}/cancel"), 400, "response_id")
    assert_error(http.post("/v1/responses/resp_unknown/cancel"), 404, "response_id")


def test_background_stream_and_resume_with_starting_after(client, http, fake):
    fake.script = words("a", "b", "c", "d", delay=0.05)
    with http.stream("POST", "/v1/responses", json={"model": MODEL, "input": "Hi", "stream": True,
                                                     "background": True}) as r:
        r.read()
    events = sse_events(r)
    final = check_stream(events, "response.completed", deltas=4)
    assert events[0]["response"]["status"] == "queued"
    rid = final["id"]
    with http.stream("GET", f"/v1/responses/{rid}", params={"stream": "true", "starting_after": 5}) as r:
        r.read()
    assert sse_events(r) == events[6:]
    replay = list(client.responses.retrieve(rid, stream=True, starting_after=3))
    assert [e.sequence_number for e in replay] == list(range(4, len(events)))
    with client.responses.stream(response_id=rid) as stream:         # the helper replays it all
        assert stream.get_final_response().output_text == "abcd"


def test_resume_follows_a_running_background_response(client, fake):
    fake.script = words(*"abcdefgh", delay=0.1)
    r = client.responses.create(model=MODEL, input="Hi", background=True)
    seen = []
    for event in client.responses.retrieve(r.id, stream=True, starting_after=0):
        seen.append(event)
    assert seen[0].sequence_number == 1 and seen[-1].type == "response.completed"
    assert seen[-1].response.output_text == "abcdefgh"


def test_stream_replay_of_a_plain_response_is_refused(client, http, fake):
    r = client.responses.create(model=MODEL, input="Hi")
    assert_error(http.get(f"/v1/responses/{r.id}", params={"stream": "true"}), 400, "stream")
    assert_error(http.get(f"/v1/responses/{r.id}", params={"starting_after": 1}), 400,
                 "starting_after")


# -- Redis down, no store, replicas -----------------------------------------------------------------
@pytest.fixture(scope="module")
def dead_store():
    return SyncStore(f"redis://127.0.0.1:{free_port()}", socket_timeout=0.2,
                     socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))


@pytest.mark.parametrize("with_store", [True, False], ids=["redis-down", "no-store"])
def test_store_unreachable_is_503_never_404_or_success(backend, dead_store, with_store):
    backend.reset()
    with gateway(backend, dead_store if with_store else None) as url, \
            httpx.Client(base_url=url, timeout=10) as http:
        for r in (create(http), create(http, stream=True), create(http, background=True),
                  create(http, store=False, previous_response_id="resp_x"),
                  http.get("/v1/responses/resp_x"), http.delete("/v1/responses/resp_x"),
                  http.get("/v1/responses/resp_x/input_items"),
                  http.post("/v1/responses/resp_x/cancel")):
            err = assert_error(r, 503, None, "store_unavailable")
            assert err["type"] == "server_error" and "127.0.0.1" not in r.text   # Redis's address
        ok = create(http, store=False)                  # nothing to store: still served
        assert ok.status_code == 200 and ok.json()["status"] == "completed"
    assert len(backend.params) == 1                     # the refused requests never ran


def test_two_replicas_share_state(backend, store, base_url, fake):
    fake.script = words("A1")
    with gateway(backend, store) as other:
        a, b = sdk(base_url), sdk(other)
        r1 = a.responses.create(model=MODEL, input="Q1")
        assert b.responses.retrieve(r1.id).output_text == "A1"
        r2 = b.responses.create(model=MODEL, input="Q2", previous_response_id=r1.id)
        assert [m["content"] for m in fake.prompts[-1]] == ["Q1", "A1", "Q2"]
        assert len(list(a.responses.input_items.list(r2.id))) == 3
        b.responses.delete(r1.id)
        with pytest.raises(openai.NotFoundError):
            a.responses.retrieve(r1.id)
        fake.script = endless(0.02)                     # cancel on B stops A's run (flag + watcher)
        bg = a.responses.create(model=MODEL, input="Hi", background=True)
        assert wait_until(lambda: len(fake.params) == 3)
        assert b.responses.cancel(bg.id).status == "cancelled"
        assert wait_until(lambda: len(fake.closed) == 3)
        assert a.responses.retrieve(bg.id).status == "cancelled"



def _orphan(store, **create) -> dict:
    body = ResponseCreateRequest.model_validate({"model": MODEL, "input": "Hi", "background": True})
    response = new_response(f"resp_orphan{time.time_ns()}", body, MODEL, "in_progress")
    store.create(response, [], **create)
    store.append_event(response["id"], {"type": "response.created", "sequence_number": 0,
                                        "response": response})
    return response


def test_a_response_whose_replica_died(backend, store):
    """No lease (its replica is gone): a follower ends with ``response.failed`` at the next
    sequence number, and the record says ``failed``, for every reader (lease.py)."""
    response = _orphan(store)
    with gateway(reset(backend), store, request_timeout_s=0.5) as url:
        client = sdk(url)
        events = list(client.responses.retrieve(response["id"], stream=True))
        assert [e.type for e in events] == ["response.created", "response.failed"]
        assert events[1].sequence_number == 1 and "stopped before it finished" in events[1].response.error.message
        assert client.responses.retrieve(response["id"]).status == "failed"
        assert client.responses.cancel(response["id"]).status == "failed"    # ended: unchanged
    assert store.get(response["id"])["status"] == "failed"


def test_a_response_whose_leased_replica_is_silent(backend, store, monkeypatch):
    """A live lease but no progress (a hung replica): followers give up with an error event, and
    a cancel ends the record itself once no runner answers."""
    response = _orphan(store, lease="gw_hung")
    monkeypatch.setattr(stored, "CANCEL_WAIT_S", 0.3)
    with gateway(reset(backend), store, request_timeout_s=0.5) as url:
        client = sdk(url)
        events = list(client.responses.retrieve(response["id"], stream=True))
        assert [e.type for e in events] == ["response.created", "error"]
        assert events[1].code == "stream_stalled" and events[1].sequence_number == 1
        assert client.responses.cancel(response["id"]).status == "cancelled"
    assert store.get(response["id"])["status"] == "cancelled"

import os
import signal
import threading
import time

import pytest
import redis

from gateway.response_store import ResponseStore, StoreUnavailable
from tandem.redis_server import EmbeddedRedis

RID = "resp_abc123"


@pytest.fixture
def server(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def client(server):
    client = server.client(timeout=0.5)
    yield client
    client.close()


@pytest.fixture
def store(client):
    return ResponseStore(client, ttl_seconds=100)


def response(rid=RID, status="completed", text="hi"):
    message = {"id": "msg_1", "type": "message", "content": [{"type": "output_text", "text": text}]}
    return {"id": rid, "object": "response", "status": status, "output": [message]}


ITEMS = [{"id": "msg_u1", "type": "message", "role": "user", "content": "héllo"},
         {"id": "msg_a1", "type": "message", "role": "assistant", "content": "hi"}]


def event(seq, kind="response.output_text.delta"):
    return {"type": kind, "sequence_number": seq, "delta": f"d{seq}"}


def test_create_get_items_update_delete(store):
    assert store.get(RID) is None and store.input_items(RID) is None
    store.create(response(status="in_progress"), ITEMS)
    assert store.get(RID) == response(status="in_progress")
    assert store.input_items(RID) == ITEMS
    store.update(response(status="completed", text="done"))
    assert store.get(RID) == response(status="completed", text="done")
    assert store.input_items(RID) == ITEMS
    assert store.delete(RID) is True
    assert store.get(RID) is None and store.input_items(RID) is None and store.ttl(RID) == -2
    assert store.delete(RID) is False


def test_create_with_no_input_items_reads_back_empty(store):
    store.create(response(), [])
    assert store.input_items(RID) == []


def test_keys_are_namespaced_and_all_carry_the_ttl(client, store):
    store.create(response(), ITEMS)
    store.append_event(RID, event(0))
    store.request_cancel(RID)
    base = "tandem:resp:{resp_abc123}"
    expected = {base, f"{base}:items", f"{base}:events", f"{base}:cancel"}
    assert {k.decode() for k in client.scan_iter()} == expected
    for key in expected:
        assert 0 < client.pttl(key) <= 100_000, key


def test_ttl_is_set_on_create_and_kept_by_update(client, store):
    store.create(response(), ITEMS)
    assert 98 <= store.ttl(RID) <= 100
    client.pexpire(f"tandem:resp:{{{RID}}}", 50_000)  # as if 50 s had passed
    store.update(response(text="later"))
    assert 48 <= store.ttl(RID) <= 50  # kept, not reset to 100
    assert store.get(RID) == response(text="later")


def test_update_of_a_missing_record_raises_and_writes_nothing(client, store):
    with pytest.raises(KeyError):
        store.update(response())
    store.create(response(), ITEMS)
    store.delete(RID)
    with pytest.raises(KeyError):
        store.update(response())
    assert client.dbsize() == 0


def test_records_expire_after_the_ttl(client):
    store = ResponseStore(client, ttl_seconds=1)
    store.create(response(), ITEMS)
    store.append_event(RID, event(0))
    store.request_cancel(RID)
    time.sleep(1.15)
    assert store.get(RID) is None and store.input_items(RID) is None
    assert store.events_after(RID, -1) == [] and not store.cancel_requested(RID)
    assert client.dbsize() == 0


def test_create_replaces_a_record_and_drops_its_events_and_cancel(store):
    store.create(response(), ITEMS)
    store.append_event(RID, event(0))
    store.request_cancel(RID)
    store.create(response(text="again"), ITEMS[:1])
    assert store.get(RID) == response(text="again") and store.input_items(RID) == ITEMS[:1]
    assert store.events_after(RID, -1) == [] and not store.cancel_requested(RID)


def test_events_after_orders_and_filters(store):
    store.create(response(status="in_progress"), ITEMS)
    assert store.events_after(RID, -1) == [] and not store.has_events(RID)
    for seq in range(5):
        store.append_event(RID, event(seq))
    assert store.has_events(RID) and not store.has_events("resp_other") and not store.has_events("x*")
    assert store.events_after(RID, -1) == [event(s) for s in range(5)]
    assert store.events_after(RID, 2) == [event(3), event(4)]
    assert store.events_after(RID, 4) == []
    assert store.events_after(RID, -7) == [event(s) for s in range(5)]


@pytest.mark.parametrize("seq", [2, 3])  # a repeat and a step back after 0..3
def test_append_rejects_a_sequence_number_not_after_the_last(store, seq):
    for s in range(4):
        store.append_event(RID, event(s))
    with pytest.raises(ValueError, match=f"sequence_number {seq}"):
        store.append_event(RID, event(seq))
    assert [e["sequence_number"] for e in store.events_after(RID, -1)] == [0, 1, 2, 3]


@pytest.mark.parametrize("bad", [{"type": "x"}, {"sequence_number": -1}, {"sequence_number": True},
                                 {"sequence_number": "3"}, [("sequence_number", 0)]])
def test_append_rejects_events_without_a_valid_sequence_number(store, bad):
    with pytest.raises(ValueError, match="sequence_number"):
        store.append_event(RID, bad)


def test_event_stream_ttl_follows_the_response_and_is_not_extended(client, store):
    store.create(response(), ITEMS)
    client.pexpire(f"tandem:resp:{{{RID}}}", 40_000)
    store.append_event(RID, event(0))
    events_key = f"tandem:resp:{{{RID}}}:events"
    first = client.pttl(events_key)
    assert 38_000 < first <= 40_000  # the response's remaining TTL, not a fresh 100 s
    time.sleep(0.05)
    store.append_event(RID, event(1))
    assert client.pttl(events_key) < first
    store.append_event("resp_orphan", event(0))  # no response: the store's full TTL
    assert 98_000 < client.pttl("tandem:resp:{resp_orphan}:events") <= 100_000


def test_blocking_read_returns_an_event_appended_by_another_thread(store):
    store.append_event(RID, event(0))
    writer = threading.Timer(0.2, store.append_event, (RID, event(1)))
    writer.start()
    try:
        start = time.monotonic()
        assert store.events_after(RID, 0, block_ms=5000) == [event(1)]
        assert 0.15 < time.monotonic() - start < 2.0
    finally:
        writer.join()


def test_blocking_read_waits_for_a_stream_that_does_not_exist_yet(store):
    writer = threading.Timer(0.2, store.append_event, (RID, event(0)))
    writer.start()
    try:
        assert store.events_after(RID, -1, block_ms=5000) == [event(0)]
    finally:
        writer.join()


def test_blocking_read_longer_than_the_socket_timeout_returns_empty(store):
    store.append_event(RID, event(0))
    start = time.monotonic()
    assert store.events_after(RID, 0, block_ms=1200) == []  # the client's socket timeout is 0.5 s
    assert 1.15 < time.monotonic() - start < 2.5


def test_blocking_read_returns_existing_events_at_once(store):
    store.append_event(RID, event(0))
    start = time.monotonic()
    assert store.events_after(RID, -1, block_ms=5000) == [event(0)]
    assert time.monotonic() - start < 0.5


def test_cancel_flag_is_seen_by_another_replica(server, store):
    store.create(response(status="in_progress"), ITEMS)
    other_client = server.client(timeout=0.5)
    try:
        other = ResponseStore(other_client, ttl_seconds=100)
        assert not other.cancel_requested(RID)
        store.request_cancel(RID)
        assert other.cancel_requested(RID)
        assert other.delete(RID)
        assert not store.cancel_requested(RID)
    finally:
        other_client.close()


def test_namespaces_are_isolated(client):
    a, b = ResponseStore(client, namespace="a"), ResponseStore(client, namespace="b")
    a.create(response(), ITEMS)
    a.append_event(RID, event(0))
    a.request_cancel(RID)
    assert b.get(RID) is None and b.events_after(RID, -1) == [] and not b.cancel_requested(RID)
    assert b.delete(RID) is False and a.get(RID) == response()


def test_everything_survives_a_restart(server, client, store):
    store.create(response(status="in_progress"), ITEMS)
    for seq in range(3):
        store.append_event(RID, event(seq))
    store.request_cancel(RID)
    client.pexpire(f"tandem:resp:{{{RID}}}", 60_000)
    events_ttl = client.pttl(f"tandem:resp:{{{RID}}}:events")
    server.stop()
    server.start()
    assert store.get(RID) == response(status="in_progress")
    assert store.input_items(RID) == ITEMS
    assert store.events_after(RID, 0) == [event(1), event(2)]
    assert store.cancel_requested(RID)
    assert 55 <= store.ttl(RID) <= 60
    assert events_ttl - 5_000 < client.pttl(f"tandem:resp:{{{RID}}}:events") <= events_ttl
    store.append_event(RID, event(3))  # the Lua script is reloaded after the restart
    assert store.events_after(RID, 2) == [event(3)]


CALLS = {
    "create": lambda s: s.create(response(), ITEMS),
    "update": lambda s: s.update(response()),
    "get": lambda s: s.get(RID),
    "input_items": lambda s: s.input_items(RID),
    "delete": lambda s: s.delete(RID),
    "ttl": lambda s: s.ttl(RID),
    "append_event": lambda s: s.append_event(RID, event(0)),
    "events_after": lambda s: s.events_after(RID, -1),
    "events_after_blocking": lambda s: s.events_after(RID, -1, block_ms=1000),
    "request_cancel": lambda s: s.request_cancel(RID),
    "cancel_requested": lambda s: s.cancel_requested(RID),
}


def test_every_call_raises_store_unavailable_when_redis_is_stopped(server, store):
    server.stop()
    for name, call in CALLS.items():
        start = time.monotonic()
        with pytest.raises(StoreUnavailable, match="unavailable"):
            call(store)
        assert time.monotonic() - start < 3.0, name


def test_a_hung_redis_raises_store_unavailable_within_the_socket_timeout(server):
    client = server.client(timeout=0.2)
    store = ResponseStore(client)
    store.create(response(), ITEMS)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(StoreUnavailable, match="TimeoutError"):
            store.get(RID)
        assert time.monotonic() - start < 3.0
    finally:
        os.kill(server.pid, signal.SIGCONT)
        client.close()
    assert store.get(RID) == response()  # and it recovers once Redis answers again


def test_busy_loading_is_unavailable(monkeypatch, client, store):
    def loading(*args, **kwargs):
        raise redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory")
    monkeypatch.setattr(client, "get", loading)
    with pytest.raises(StoreUnavailable, match="BusyLoadingError"):
        store.get(RID)


BAD_IDS = ["resp_", "resp_a*", "resp_a:items", "resp_a}:x", "resp_a\n", "resp_ä", "msg_1", "",
           "resp_" + "a" * 201, None, 7]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_invalid_ids_read_as_not_found_and_are_never_written(client, store, bad):
    store.create(response(), ITEMS)
    store.append_event(RID, event(0))
    before = client.dbsize()
    assert store.get(bad) is None and store.input_items(bad) is None
    assert store.delete(bad) is False and store.ttl(bad) == -2
    assert store.events_after(bad, -1, block_ms=1000) == [] and not store.cancel_requested(bad)
    with pytest.raises(KeyError):
        store.update(response(rid=bad))
    for write in (lambda: store.create(response(rid=bad), ITEMS), lambda: store.append_event(bad, event(1)),
                  lambda: store.request_cancel(bad)):
        with pytest.raises(ValueError, match="response id"):
            write()
    assert client.dbsize() == before


def test_a_glob_id_cannot_reach_other_keys(client, store):
    store.create(response(), ITEMS)
    assert store.get("resp_*") is None and store.delete("resp_*") is False
    assert store.get(RID) == response()


@pytest.mark.parametrize("items", [[{"type": "message"}], [{"id": 5}], ["msg_1"], {"id": "msg_1"}])
def test_create_rejects_input_items_without_ids(client, store, items):
    with pytest.raises(ValueError, match="input_items"):
        store.create(response(), items)
    assert client.dbsize() == 0


@pytest.mark.parametrize("kw", [{"namespace": "a*"}, {"namespace": ""}, {"ttl_seconds": 0},
                                {"ttl_seconds": 1.5}, {"ttl_seconds": True}])
def test_bad_config_is_rejected(client, kw):
    with pytest.raises(ValueError):
        ResponseStore(client, **kw)


@pytest.mark.parametrize("protocol, decode", [(2, True), (3, False), (3, True)])
def test_other_client_protocols_and_decoding(server, protocol, decode):
    client = redis.Redis.from_url(server.url, protocol=protocol, decode_responses=decode, socket_timeout=2,
                                  socket_connect_timeout=2)
    try:
        store = ResponseStore(client)
        store.create(response(), ITEMS)
        store.append_event(RID, event(0))
        store.append_event(RID, event(1))
        assert store.get(RID) == response() and store.input_items(RID) == ITEMS
        assert store.events_after(RID, 0) == [event(1)]
        assert store.events_after(RID, 1, block_ms=50) == []
    finally:
        client.close()

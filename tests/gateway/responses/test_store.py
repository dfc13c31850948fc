"""ResponseStore on a real redis-server: keys, TTLs, the event log, cancels, failures."""

import asyncio
import os
import signal
import time

import pytest
import redis
import redis.asyncio as aioredis
from redis.backoff import ExponentialWithJitterBackoff
from redis.asyncio.retry import Retry

from gateway.responses.store import ResponseStore, StoreUnavailable
from tandem.redis_server import EmbeddedRedis

RID = "resp_abc123"


@pytest.fixture
def server(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield server


pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def client(server):
    """A plain client on the same server, for looking at keys."""
    client = server.client(timeout=0.5)
    yield client
    client.close()


def async_client(server, timeout=0.5, **kw):
    return aioredis.Redis.from_url(server.url, socket_timeout=timeout, socket_connect_timeout=timeout, **kw)


@pytest.fixture
async def store(server):
    store = ResponseStore(async_client(server), ttl_seconds=100)
    yield store
    await store._client.aclose()


def ttl(client, rid=RID, suffix=""):
    return client.ttl(f"tandem:resp:{{{rid}}}{suffix}")


def response(rid=RID, status="in_progress", text="hi"):
    message = {"id": "msg_1", "type": "message", "content": [{"type": "output_text", "text": text}]}
    return {"id": rid, "object": "response", "status": status, "output": [message]}


ITEMS = [{"id": "msg_u1", "type": "message", "role": "user", "content": "héllo"},
         {"id": "msg_a1", "type": "message", "role": "assistant", "content": "hi"}]


def event(seq, kind="response.output_text.delta"):
    return {"type": kind, "sequence_number": seq, "delta": f"d{seq}"}


async def test_create_get_items_update_delete(client, store):
    assert await store.get(RID) is None and await store.input_items(RID) is None
    await store.create(response(status="in_progress"), ITEMS)
    assert await store.get(RID) == response(status="in_progress")
    assert await store.input_items(RID) == ITEMS
    await store.update(response(status="completed", text="done"))
    assert await store.get(RID) == response(status="completed", text="done")
    assert await store.input_items(RID) == ITEMS
    assert await store.delete(RID) is True
    assert await store.get(RID) is None and await store.input_items(RID) is None and ttl(client) == -2
    assert await store.delete(RID) is False


async def test_create_with_no_input_items_reads_back_empty(store):
    await store.create(response(), [])
    assert await store.input_items(RID) == []


async def test_keys_are_namespaced_and_all_carry_the_ttl(client, store):
    await store.create(response(), ITEMS)
    await store.append_events(RID, [event(0)])
    await store.request_cancel(RID)
    base = "tandem:resp:{resp_abc123}"
    expected = {base, f"{base}:items", f"{base}:events", f"{base}:cancel", f"{base}:owner"}
    assert {k.decode() for k in client.scan_iter()} == expected
    for key in expected:
        assert 0 < client.pttl(key) <= 100_000, key


async def test_ttl_is_set_on_create_and_kept_by_update(client, store):
    await store.create(response(), ITEMS)
    assert 98 <= ttl(client) <= 100
    client.pexpire(f"tandem:resp:{{{RID}}}", 50_000)  # as if 50 s had passed
    await store.update(response(text="later"))
    assert 48 <= ttl(client) <= 50  # kept, not reset to 100
    assert await store.get(RID) == response(text="later")


async def test_update_of_a_missing_record_is_false_and_writes_nothing(client, store):
    assert await store.update(response()) is False
    await store.create(response(), ITEMS)
    await store.delete(RID)
    assert await store.update(response()) is False
    assert client.dbsize() == 0


async def test_records_expire_after_the_ttl(server, client):
    store = ResponseStore(async_client(server), ttl_seconds=1)
    await store.create(response(), ITEMS)
    await store.append_events(RID, [event(0)])
    await store.request_cancel(RID)
    await asyncio.sleep(1.15)
    assert await store.get(RID) is None and await store.input_items(RID) is None
    assert await store.events_after(RID, -1) == [] and not await store.cancel_requested(RID)
    assert client.dbsize() == 0


async def test_create_replaces_a_record_and_drops_its_events_and_cancel(store):
    await store.create(response(), ITEMS)
    await store.append_events(RID, [event(0)])
    await store.request_cancel(RID)
    await store.create(response(text="again"), ITEMS[:1])
    assert await store.get(RID) == response(text="again") and await store.input_items(RID) == ITEMS[:1]
    assert await store.events_after(RID, -1) == [] and not await store.cancel_requested(RID)


async def test_events_after_orders_and_filters(store):
    await store.create(response(status="in_progress"), ITEMS)
    assert await store.events_after(RID, -1) == [] and not await store.has_events(RID)
    for seq in range(5):
        await store.append_events(RID, [event(seq)])
    assert await store.has_events(RID) and not await store.has_events("resp_other") and not await store.has_events("x*")
    assert await store.events_after(RID, -1) == [event(s) for s in range(5)]
    assert await store.events_after(RID, 2) == [event(3), event(4)]
    assert await store.events_after(RID, 4) == []
    assert await store.events_after(RID, -7) == [event(s) for s in range(5)]


@pytest.mark.parametrize("seq", [2, 3])  # a repeat and a step back after 0..3
async def test_append_rejects_a_sequence_number_not_after_the_last(store, seq):
    for s in range(4):
        await store.append_events(RID, [event(s)])
    with pytest.raises(ValueError, match=f"sequence_number {seq}"):
        await store.append_events(RID, [event(seq)])
    assert [e["sequence_number"] for e in await store.events_after(RID, -1)] == [0, 1, 2, 3]


@pytest.mark.parametrize("bad", [{"type": "x"}, {"sequence_number": -1}, {"sequence_number": True},
                                 {"sequence_number": "3"}, [("sequence_number", 0)]])
async def test_append_rejects_events_without_a_valid_sequence_number(store, bad):
    with pytest.raises(ValueError, match="sequence_number"):
        await store.append_events(RID, [bad])


async def test_event_stream_ttl_follows_the_response_and_is_not_extended(client, store):
    await store.create(response(), ITEMS)
    client.pexpire(f"tandem:resp:{{{RID}}}", 40_000)
    await store.append_events(RID, [event(0)])
    events_key = f"tandem:resp:{{{RID}}}:events"
    first = client.pttl(events_key)
    assert 38_000 < first <= 40_000  # the response's remaining TTL, not a fresh 100 s
    await asyncio.sleep(0.05)
    await store.append_events(RID, [event(1)])
    assert client.pttl(events_key) < first
    await store.append_events("resp_orphan", [event(0)])  # no response: the store's full TTL
    assert 98_000 < client.pttl("tandem:resp:{resp_orphan}:events") <= 100_000


async def later(delay, coro):
    await asyncio.sleep(delay)
    await coro


async def test_blocking_read_returns_an_event_appended_by_another_client(server, store):
    await store.append_events(RID, [event(0)])
    writer = ResponseStore(async_client(server), ttl_seconds=100)
    task = asyncio.ensure_future(later(0.2, writer.append_events(RID, [event(1)])))
    start = time.monotonic()
    assert await store.events_after(RID, 0, block_ms=5000) == [event(1)]
    assert 0.15 < time.monotonic() - start < 2.0
    await task


async def test_blocking_read_waits_for_a_stream_that_does_not_exist_yet(server, store):
    writer = ResponseStore(async_client(server), ttl_seconds=100)
    task = asyncio.ensure_future(later(0.2, writer.append_events(RID, [event(0)])))
    assert await store.events_after(RID, -1, block_ms=5000) == [event(0)]
    await task


async def test_cancel_is_published_to_subscribers(server, store):
    listener = ResponseStore(async_client(server), ttl_seconds=100)
    async with listener.cancels() as cancels:
        await store.request_cancel(RID)
        got = [rid async for rid in _first_id(cancels)]
    assert got == [RID] and await listener.cancel_requested(RID)


async def _first_id(cancels):
    async for rid in cancels:
        if rid:
            yield rid
            return


async def test_blocking_read_longer_than_the_socket_timeout_returns_empty(store):
    await store.append_events(RID, [event(0)])
    start = time.monotonic()
    assert await store.events_after(RID, 0, block_ms=1200) == []  # the client's socket timeout is 0.5 s
    assert 1.15 < time.monotonic() - start < 2.5


async def test_blocking_read_returns_existing_events_at_once(store):
    await store.append_events(RID, [event(0)])
    start = time.monotonic()
    assert await store.events_after(RID, -1, block_ms=5000) == [event(0)]
    assert time.monotonic() - start < 0.5


async def test_cancel_flag_is_seen_by_another_replica(server, store):
    await store.create(response(status="in_progress"), ITEMS)
    other_client = async_client(server)
    try:
        other = ResponseStore(other_client, ttl_seconds=100)
        assert not await other.cancel_requested(RID)
        await store.request_cancel(RID)
        assert await other.cancel_requested(RID)
        assert await other.delete(RID)
        assert not await store.cancel_requested(RID)
    finally:
        await other_client.aclose()


async def test_namespaces_are_isolated(server):
    a = ResponseStore(async_client(server), namespace="a")
    b = ResponseStore(async_client(server), namespace="b")
    await a.create(response(), ITEMS)
    await a.append_events(RID, [event(0)])
    await a.request_cancel(RID)
    assert await b.get(RID) is None and await b.events_after(RID, -1) == [] and not await b.cancel_requested(RID)
    assert await b.delete(RID) is False and await a.get(RID) == response()


async def test_everything_survives_a_restart(server, client):
    # As in production (gateway/main.py): a stale connection after the restart is retried.
    store = ResponseStore(async_client(server, retry=Retry(ExponentialWithJitterBackoff(cap=0.2, base=0.01), 3)),
                          ttl_seconds=100)
    await store.create(response(status="in_progress"), ITEMS)
    for seq in range(3):
        await store.append_events(RID, [event(seq)])
    await store.request_cancel(RID)
    client.pexpire(f"tandem:resp:{{{RID}}}", 60_000)
    events_ttl = client.pttl(f"tandem:resp:{{{RID}}}:events")
    server.stop()
    server.start()
    assert await store.get(RID) == response(status="in_progress")
    assert await store.input_items(RID) == ITEMS
    assert await store.events_after(RID, 0) == [event(1), event(2)]
    assert await store.cancel_requested(RID)
    assert 55 <= ttl(client) <= 60
    assert events_ttl - 5_000 < client.pttl(f"tandem:resp:{{{RID}}}:events") <= events_ttl
    await store.append_events(RID, [event(3)])  # the Lua script is reloaded after the restart
    assert await store.events_after(RID, 2) == [event(3)]


CALLS = {
    "create": lambda s: s.create(response(), ITEMS),
    "update": lambda s: s.update(response()),
    "get": lambda s: s.get(RID),
    "input_items": lambda s: s.input_items(RID),
    "delete": lambda s: s.delete(RID),
    "append_events": lambda s: s.append_events(RID, [event(0)]),
    "events_after": lambda s: s.events_after(RID, -1),
    "events_after_blocking": lambda s: s.events_after(RID, -1, block_ms=1000),
    "request_cancel": lambda s: s.request_cancel(RID),
    "cancel_requested": lambda s: s.cancel_requested(RID),
    "cancels": lambda s: s.cancels().__aenter__(),
    "ping": lambda s: s.ping(),
    "leased": lambda s: s.leased(RID),
    "renew_leases": lambda s: s.renew_leases([RID], "gw_a"),
    "fail_orphan": lambda s: s.fail_orphan(RID, "gone"),
}


async def test_every_call_raises_store_unavailable_when_redis_is_stopped(server, store):
    server.stop()
    for name, call in CALLS.items():
        start = time.monotonic()
        with pytest.raises(StoreUnavailable, match="unavailable"):
            await call(store)
        assert time.monotonic() - start < 3.0, name


async def test_a_hung_redis_raises_store_unavailable_within_the_socket_timeout(server):
    client = async_client(server, timeout=0.2)
    store = ResponseStore(client)
    await store.create(response(), ITEMS)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(StoreUnavailable, match="TimeoutError"):
            await store.get(RID)
        assert time.monotonic() - start < 3.0
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert await store.get(RID) == response()  # and it recovers once Redis answers again


async def test_busy_loading_is_unavailable(monkeypatch, store):
    async def loading(*args, **kwargs):
        raise redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory")
    monkeypatch.setattr(store._client, "get", loading)
    with pytest.raises(StoreUnavailable, match="BusyLoadingError"):
        await store.get(RID)


BAD_IDS = ["resp_", "resp_a*", "resp_a:items", "resp_a}:x", "resp_a\n", "resp_ä", "msg_1", "",
           "resp_" + "a" * 201, None, 7]


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_invalid_ids_read_as_not_found_and_are_never_written(client, store, bad):
    await store.create(response(), ITEMS)
    await store.append_events(RID, [event(0)])
    before = client.dbsize()
    assert await store.get(bad) is None and await store.input_items(bad) is None
    assert await store.delete(bad) is False
    assert await store.events_after(bad, -1, block_ms=1000) == [] and not await store.cancel_requested(bad)
    assert await store.update(response(rid=bad)) is False
    for write in (lambda: store.create(response(rid=bad), ITEMS),
                  lambda: store.append_events(bad, [event(1)]), lambda: store.request_cancel(bad)):
        with pytest.raises(ValueError, match="response id"):
            await write()
    assert client.dbsize() == before


async def test_a_glob_id_cannot_reach_other_keys(client, store):
    await store.create(response(), ITEMS)
    assert await store.get("resp_*") is None and await store.delete("resp_*") is False
    assert await store.get(RID) == response()


@pytest.mark.parametrize("items", [[{"type": "message"}], [{"id": 5}], ["msg_1"], {"id": "msg_1"}])
async def test_create_rejects_input_items_without_ids(client, store, items):
    with pytest.raises(ValueError, match="input_items"):
        await store.create(response(), items)
    assert client.dbsize() == 0


@pytest.mark.parametrize("kw", [{"namespace": "a*"}, {"namespace": ""}, {"ttl_seconds": 0},
                                {"ttl_seconds": 1.5}, {"ttl_seconds": True}])
async def test_bad_config_is_rejected(store, kw):
    with pytest.raises(ValueError):
        ResponseStore(store._client, **kw)


@pytest.mark.parametrize("protocol, decode", [(2, True), (3, False), (3, True)])
async def test_other_client_protocols_and_decoding(server, protocol, decode):
    client = async_client(server, timeout=2, protocol=protocol, decode_responses=decode)
    try:
        store = ResponseStore(client)
        await store.create(response(), ITEMS)
        await store.append_events(RID, [event(0)])
        await store.append_events(RID, [event(1)])
        assert await store.get(RID) == response() and await store.input_items(RID) == ITEMS
        assert await store.events_after(RID, 0) == [event(1)]
        assert await store.events_after(RID, 1, block_ms=50) == []
    finally:
        await client.aclose()


# -- leases (gateway/responses/lease.py) ------------------------------------------------------------
async def test_a_running_record_without_a_live_lease_is_failed_once_with_an_event(client, server):
    store = ResponseStore(async_client(server), ttl_seconds=100, lease_s=0.2)
    await store.create(response(status="in_progress"), ITEMS, lease="gw_a")
    await store.append_events(RID, [event(0), event(1)])
    assert (await store.fail_orphan(RID, "gone"))["status"] == "in_progress"   # leased: untouched
    await asyncio.sleep(0.3)
    failed = await store.fail_orphan(RID, "gone")
    assert failed["status"] == "failed" and failed["error"] == {"code": "server_error", "message": "gone"}
    assert await store.get(RID) == failed
    [last] = await store.events_after(RID, 1)
    assert last == {"type": "response.failed", "sequence_number": 2, "response": failed}
    assert await store.fail_orphan(RID, "again") == failed                      # only once
    assert 0 < client.pttl(f"tandem:resp:{{{RID}}}:events") <= 100_000


async def test_a_slow_runner_loses_the_race_and_cannot_resurrect_its_response(server):
    store = ResponseStore(async_client(server), ttl_seconds=100, lease_s=0.2)
    await store.create(response(status="in_progress"), ITEMS, lease="gw_a")
    await store.append_events(RID, [event(0)])
    await asyncio.sleep(0.3)
    failed = await store.fail_orphan(RID, "gone")
    with pytest.raises(ValueError):                       # its next event collides with the failure
        await store.append_events(RID, [event(1)])
    assert await store.update(response(status="completed", text="late")) is False
    assert await store.get(RID) == failed
    assert [e["type"] for e in await store.events_after(RID, -1)] == [
        "response.output_text.delta", "response.failed"]


async def test_renewed_leases_keep_a_response_running_and_the_final_save_drops_the_lease(client, server):
    store = ResponseStore(async_client(server), ttl_seconds=100, lease_s=0.3)
    await store.create(response(status="queued"), ITEMS, lease="gw_a")
    for _ in range(4):
        await asyncio.sleep(0.15)
        await store.renew_leases([RID], "gw_a")
    assert (await store.fail_orphan(RID, "gone"))["status"] == "queued"
    assert await store.update(response(status="in_progress")) is True       # not final: leased
    assert client.exists(f"tandem:resp:{{{RID}}}:lease") == 1
    assert await store.update(response(status="completed")) is True
    assert client.exists(f"tandem:resp:{{{RID}}}:lease") == 0
    assert (await store.fail_orphan(RID, "gone"))["status"] == "completed"   # ended: left alone

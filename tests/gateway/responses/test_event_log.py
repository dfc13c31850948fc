"""EventLog on a real redis-server: batched writes off the caller's path, order, the bound, failure."""

import asyncio
import os
import signal

import pytest
import redis.asyncio as aioredis

from gateway.responses.event_log import EventLog
from gateway.responses.store import ResponseStore, StoreUnavailable
from tandem.redis_server import EmbeddedRedis

pytestmark = pytest.mark.anyio
RID = "resp_log1"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def server(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
async def store(server):
    client = aioredis.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
    yield ResponseStore(client, ttl_seconds=100)
    await client.aclose()


def event(seq):
    return {"type": "response.output_text.delta", "sequence_number": seq, "delta": f"d{seq}"}


async def test_events_reach_redis_in_order_in_few_batches(server, store):
    log = EventLog(store, RID, max_unflushed=32)
    for seq in range(200):
        log.append(event(seq))               # never waits for Redis
        await log.room()
    await log.flush()
    assert log.unflushed == 0
    assert await store.events_after(RID, -1) == [event(s) for s in range(200)]
    stats = server.client().info("commandstats")
    assert stats["cmdstat_xadd"]["calls"] == 200
    scripts = sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))
    assert scripts <= 200 // 8               # batched: far fewer round trips than events
    await log.close()


async def test_append_does_not_wait_for_a_hung_redis_and_the_bound_holds(server, store):
    log = EventLog(store, RID, max_unflushed=8)
    log.append(event(0))
    await log.flush()
    os.kill(server.pid, signal.SIGSTOP)      # Redis stops answering
    try:
        for seq in range(1, 8):              # below the bound: no waiting at all
            log.append(event(seq))
            await asyncio.wait_for(log.room(), 0.05)
        log.append(event(8))                 # the bound: room() now waits for Redis
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(log.room(), 0.2)
        assert log.unflushed == 8            # never more than max_unflushed outstanding
    finally:
        os.kill(server.pid, signal.SIGCONT)
    await log.flush()
    assert [e["sequence_number"] for e in await store.events_after(RID, -1)] == list(range(9))
    await log.close()


async def test_a_store_failure_ends_the_log_and_is_raised(server, store):
    log = EventLog(store, RID)
    log.append(event(0))
    await log.flush()
    server.stop()
    log.append(event(1))
    with pytest.raises(StoreUnavailable):
        await log.flush()
    log.append(event(2))                     # dropped: the log has failed
    assert log.unflushed == 0 and isinstance(log.error, StoreUnavailable)
    with pytest.raises(StoreUnavailable):
        await log.room()
    await log.close()


async def test_an_out_of_order_event_fails_the_log_loudly(store):
    log = EventLog(store, RID)
    log.append(event(3))
    log.append(event(1))
    with pytest.raises(StoreUnavailable, match="ValueError"):
        await log.flush()
    await log.close()

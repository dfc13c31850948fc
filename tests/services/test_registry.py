import logging
import time

import pytest
import redis

from services.registry import Heartbeat, WorkerInfo, WorkerRegistry
from tandem.redis_server import EmbeddedRedis


@pytest.fixture
def server(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def client(server):
    client = server.client(timeout=0.5)
    yield client
    client.close()


def worker(worker_id="d0", role="decode", running=0, waiting=0, free=100, total=100, **kw):
    return WorkerInfo(worker_id=worker_id, role=role, address=f"127.0.0.1:{5000 + len(worker_id)}",
                      pid=1234, max_num_seqs=8, num_running=running, num_waiting=waiting,
                      free_blocks=free, total_blocks=total, **kw)


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_worker_info_json_round_trip_and_load():
    info = worker(running=4, waiting=4, free=25, total=100, kv_store="127.0.0.1:29500", started_at=1.5)
    assert WorkerInfo.from_json(info.to_json()) == info
    assert info.load == pytest.approx(1.0 + 0.75)
    assert worker(total=0, free=0).load == 0.0
    newer = info.to_json()[:-1] + ',"gpu":"h100"}'  # fields from a newer worker are ignored
    assert WorkerInfo.from_json(newer) == info


@pytest.mark.parametrize("kw, field", [({"role": "router"}, "role"), ({"worker_id": "a*b"}, "worker_id"),
                                       ({"free": 5, "total": 4}, "free_blocks"),
                                       ({"running": -1}, "counts"), ({"running": "1"}, "num_running")])
def test_worker_info_rejects_bad_fields(kw, field):
    with pytest.raises(ValueError, match=field):
        worker(**kw)


def test_publish_then_live_with_role_filter(client):
    registry = WorkerRegistry(client, ttl_seconds=5)
    before = time.time()
    for info in (worker("d1"), worker("d0"), worker("p0", role="prefill")):
        registry.publish(info)
    assert [w.worker_id for w in registry.live()] == ["d0", "d1", "p0"]
    assert [w.worker_id for w in registry.live("decode")] == ["d0", "d1"]
    assert [w.worker_id for w in registry.live("prefill")] == ["p0"]
    assert registry.live("colocated") == []
    assert all(w.updated_at >= before for w in registry.live())
    now_ms = int(client.time()[0]) * 1000 + int(client.time()[1]) // 1000
    assert 4000 < client.zscore("tandem:workers:expiry", "decode:d0") - now_ms <= 5000
    assert client.hexists("tandem:workers", "decode:d0")
    with pytest.raises(ValueError, match="role"):
        registry.live("router")


def test_entries_expire_after_the_ttl(client):
    registry = WorkerRegistry(client, ttl_seconds=0.5)
    registry.publish(worker("d0"))
    assert len(registry.live()) == 1
    time.sleep(0.6)
    assert registry.live() == []
    assert client.hlen("tandem:workers") == 0 and client.zcard("tandem:workers:expiry") == 0  # pruned


def test_remove(client):
    registry = WorkerRegistry(client)
    registry.publish(worker("d0"))
    registry.publish(worker("d1"))
    registry.remove("d0")
    registry.remove("never-there")
    assert [w.worker_id for w in registry.live()] == ["d1"]


def test_namespaces_do_not_see_each_other(client):
    a, b = WorkerRegistry(client, namespace="a"), WorkerRegistry(client, namespace="b")
    a.publish(worker("d0"))
    assert b.live() == [] and len(a.live()) == 1


def test_unreadable_entries_are_skipped(client, caplog):
    registry = WorkerRegistry(client)
    registry.publish(worker("d0"))
    for name, value in (("decode:bad", '{"worker_id": "bad"}'), ("decode:junk", "not json")):
        client.hset("tandem:workers", name, value)
        client.zadd("tandem:workers:expiry", {name: 10**15})
    with caplog.at_level(logging.WARNING, logger="services.registry"):
        assert [w.worker_id for w in registry.live("decode")] == ["d0"]
    assert "bad" in caplog.text and "junk" in caplog.text


def test_heartbeat_keeps_a_worker_alive_and_stop_removes_it(client):
    registry = WorkerRegistry(client, ttl_seconds=1.0)
    load = {"running": 0}

    def status():
        load["running"] += 1
        return worker("d0", running=min(load["running"], 8))

    with Heartbeat(registry, status, interval=0.1) as heartbeat:
        assert len(registry.live()) == 1  # the first beat is published by start()
        time.sleep(1.5)  # well past the TTL
        [alive] = registry.live("decode")
        assert alive.num_running >= 4  # status() was polled on every beat
    assert registry.live() == []
    heartbeat.stop()  # idempotent


def test_heartbeat_survives_a_redis_restart(server, client, caplog):
    registry = WorkerRegistry(client, ttl_seconds=0.6)
    heartbeat = Heartbeat(registry, lambda: worker("d0")).start()
    try:
        with caplog.at_level(logging.INFO, logger="services.registry"):
            server.stop()
            time.sleep(0.8)  # beats fail; the persisted entry expires meanwhile
            server.start()
            restarted = time.time()
            wait_until(lambda: any(w.updated_at >= restarted for w in registry.live()))
        assert "failed" in caplog.text and "recovered" in caplog.text
    finally:
        heartbeat.stop()
    assert registry.live() == []


def test_heartbeat_start_fails_loudly_without_redis(server, client):
    server.stop()
    registry = WorkerRegistry(client, ttl_seconds=0.6)
    with pytest.raises(redis.ConnectionError):
        Heartbeat(registry, lambda: worker("d0")).start()

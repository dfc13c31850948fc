import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tandem.redis_server import EmbeddedRedis, RedisStartError


def test_start_ping_stop(tmp_path):
    data_dir = tmp_path / "missing" / "redis"
    with EmbeddedRedis(data_dir) as server:
        assert server.running and server.port > 0
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url, socket_timeout=1)
        assert client.ping()
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("save") == {"save": ""}
    assert not server.running and server.pid is None
    assert (data_dir / "redis.log").exists()
    with pytest.raises(redis.ConnectionError):
        server.client(timeout=0.5).ping()
    server.stop()  # idempotent


def test_data_and_ttl_survive_a_restart(tmp_path):
    server = EmbeddedRedis(tmp_path).start()
    client = server.client()
    client.set("stored", "value", ex=100)
    client.set("forever", "1")
    port = server.port
    server.stop()

    server.start()  # same data dir, same port
    assert server.port == port
    client = server.client()
    assert client.get("stored") == b"value"
    assert 90 < client.ttl("stored") <= 100
    assert client.ttl("forever") == -1
    server.stop()

    with EmbeddedRedis(tmp_path) as other:  # a new instance on the same dir, another port
        assert other.client().get("stored") == b"value"


def test_two_instances_are_independent(tmp_path):
    with EmbeddedRedis(tmp_path / "a") as a, EmbeddedRedis(tmp_path / "b") as b:
        assert a.port != b.port
        a.client().set("k", "a")
        b.client().set("k", "b")
        assert a.client().get("k") == b"a" and b.client().get("k") == b"b"


def test_port_taken_by_a_plain_socket(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        server = EmbeddedRedis(tmp_path, port=port, start_timeout=5)
        with pytest.raises(RedisStartError, match=rf"port {port} exited(.|\n)*Address already in use"):
            server.start()
        assert not server.running


def test_port_taken_by_another_redis_is_not_mistaken_for_ours(tmp_path):
    with EmbeddedRedis(tmp_path / "first") as first:
        second = EmbeddedRedis(tmp_path / "second", port=first.port, start_timeout=5)
        with pytest.raises(RedisStartError, match="Address already in use"):
            second.start()
        assert first.client().ping()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_child_dies_with_its_parent(tmp_path):
    script = ("import sys, time\n"
              "from tandem.redis_server import EmbeddedRedis\n"
              f"server = EmbeddedRedis({str(tmp_path)!r}).start()\n"
              "print(server.pid, flush=True)\n"
              "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    try:
        redis_pid = int(parent.stdout.readline())
        assert _alive(redis_pid)
    finally:
        parent.kill()
        parent.wait(5)
    deadline = time.monotonic() + 5
    while _alive(redis_pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(redis_pid)

"""The worker registry: which workers are alive, where they listen, and how loaded they are.

Rules:
- Two Redis keys per namespace, whatever else the keyspace holds (30 days of stored responses must
  not slow routing): ``{namespace}:workers`` is a hash ``role:worker_id -> WorkerInfo JSON`` and
  ``{namespace}:workers:expiry`` a sorted set of the same members scored by when each expires (ms,
  by the Redis server's clock, so hosts' clocks never matter). A member whose score is in the past
  is dead; readers skip it and prune it. Reading all live workers is one script call, O(workers).
- A worker owns its entry: its ``Heartbeat`` republishes every ``ttl / 3`` seconds (two beats may be
  missed before it expires) and deletes the entry on a clean stop. Gateways only read (``live``, or
  ``gateway/routing.py``'s ``RegistryView``, which reads the same keys with ``redis.asyncio``).
- ``publish`` stamps ``updated_at`` with the publisher's wall clock; it is informational only.
- Readers skip, and log, entries they cannot parse, so one bad worker cannot stop routing. Unknown
  JSON fields are ignored so that newer workers may add fields; missing ones are an error.
- The Redis client should carry socket timeouts (see ``EmbeddedRedis.client``): they bound every
  call made here, and so every beat.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Callable

import redis

log = logging.getLogger(__name__)

ROLES = ("prefill", "decode", "colocated")
_NAME = re.compile(r"[\w.@:-]+")

# KEYS: hash, expiry zset. ARGV: member, JSON, ttl in ms.
PUBLISH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
"""
# KEYS: hash, expiry zset. Prunes expired members; returns [member, JSON, member, JSON, ...].
LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, member in ipairs(dead) do redis.call('HDEL', KEYS[1], member) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local out = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')) do
    local value = redis.call('HGET', KEYS[1], member)
    if value then out[#out + 1] = member; out[#out + 1] = value end
end
return out
"""
_TYPES = {"str": (str,), "int": (int,), "float": (int, float)}


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker announces about itself; validated when built, including from JSON."""

    worker_id: str
    role: str             # one of ROLES
    address: str          # gRPC host:port
    pid: int
    max_num_seqs: int     # capacity of the running batch
    num_running: int
    num_waiting: int
    free_blocks: int      # KV cache blocks on the free list
    total_blocks: int
    kv_store: str = ""    # decode workers: host:port of their torch.distributed TCPStore
    metrics_address: str = ""   # host:port serving Prometheus /metrics ("" from older workers)
    started_at: float = 0.0
    updated_at: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, _TYPES[f.type]):
                raise ValueError(f"WorkerInfo.{f.name} must be {f.type}, got {value!r}")
        if not _NAME.fullmatch(self.worker_id):
            raise ValueError(f"WorkerInfo.worker_id must match {_NAME.pattern}, got {self.worker_id!r}")
        if self.role not in ROLES:
            raise ValueError(f"WorkerInfo.role must be one of {ROLES}, got {self.role!r}")
        if self.max_num_seqs <= 0:
            raise ValueError(f"WorkerInfo.max_num_seqs must be positive, got {self.max_num_seqs}")
        if min(self.num_running, self.num_waiting, self.free_blocks) < 0:
            raise ValueError("WorkerInfo counts (num_running, num_waiting, free_blocks) must be >= 0")
        if not 0 <= self.free_blocks <= self.total_blocks:
            raise ValueError(f"WorkerInfo.free_blocks ({self.free_blocks}) must be within "
                             f"[0, total_blocks={self.total_blocks}]")

    @property
    def load(self) -> float:
        """Queue pressure plus KV pressure; 0 is idle, each term reaches 1 at capacity.

        ``(num_running + num_waiting) / max_num_seqs`` grows past 1 as requests queue;
        ``1 - free_blocks / total_blocks`` is the used fraction of the KV cache (0 without one).
        """
        queue = (self.num_running + self.num_waiting) / self.max_num_seqs
        kv = 1.0 - self.free_blocks / self.total_blocks if self.total_blocks else 0.0
        return queue + kv

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes) -> "WorkerInfo":
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError(f"WorkerInfo JSON must be an object, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def registry_keys(namespace: str) -> tuple[str, str]:
    """(hash, expiry sorted set) of ``namespace``'s registry."""
    if not _NAME.fullmatch(namespace):
        raise ValueError(f"namespace must match {_NAME.pattern}, got {namespace!r}")
    return f"{namespace}:workers", f"{namespace}:workers:expiry"


class WorkerRegistry:
    """Live workers in Redis: workers ``publish`` and ``remove``; ``live`` reads them all."""

    def __init__(self, client: redis.Redis, namespace: str = "tandem", ttl_seconds: float = 5.0) -> None:
        if ttl_seconds < 0.01:
            raise ValueError(f"ttl_seconds must be at least 0.01, got {ttl_seconds}")
        self._keys = registry_keys(namespace)
        self.ttl_seconds = ttl_seconds
        self._publish = client.register_script(PUBLISH)
        self._live = client.register_script(LIVE)
        self._client = client

    def publish(self, info: WorkerInfo) -> None:
        """Write the worker's entry, stamped now, expiring ``ttl_seconds`` from now."""
        stamped = replace(info, updated_at=time.time())
        self._publish(keys=self._keys, args=[member(info.role, info.worker_id), stamped.to_json(),
                                             max(1, round(self.ttl_seconds * 1000))])

    def remove(self, worker_id: str) -> None:
        """Delete the worker's entry under every role; a no-op if it is gone already."""
        members = [member(role, worker_id) for role in ROLES]
        with self._client.pipeline(transaction=True) as pipe:
            pipe.hdel(self._keys[0], *members)
            pipe.zrem(self._keys[1], *members)
            pipe.execute()

    def live(self, role: str | None = None) -> list[WorkerInfo]:
        """Unexpired workers (of ``role``, if given), sorted by worker_id."""
        if role is not None and role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        workers = parse_live(self._live(keys=self._keys))
        return [w for w in workers if role is None or w.role == role]


def member(role: str, worker_id: str) -> str:
    return f"{role}:{worker_id}"


def parse_live(reply: list) -> list[WorkerInfo]:
    """The ``LIVE`` script's reply as WorkerInfos sorted by worker_id; unreadable ones skipped."""
    workers = (_parse(reply[i], reply[i + 1]) for i in range(0, len(reply), 2))
    return sorted((w for w in workers if w is not None), key=lambda w: w.worker_id)


def _parse(key: bytes | str, value: bytes | str) -> WorkerInfo | None:
    try:
        return WorkerInfo.from_json(value)
    except (ValueError, TypeError) as exc:
        log.warning("skipping unreadable registry entry %r: %s", key, exc)
        return None


class Heartbeat:
    """Keeps one worker's registry entry alive from a daemon thread.

    Rules: ``start()`` publishes the first beat in the caller's thread, so a worker that cannot reach
    Redis at boot fails loudly. After that, every ``interval`` seconds (default ``ttl / 3``) the thread
    calls ``status()`` and publishes the result; a failed beat (Redis down, ``status`` raising) is
    logged once per outage and retried on the next tick, and never ends the thread. ``stop()`` ends
    the thread (a bounded join) and deletes the key, best effort: if Redis is down, the key expires.
    """

    def __init__(self, registry: WorkerRegistry, status: Callable[[], WorkerInfo],
                 interval: float | None = None) -> None:
        self.interval = registry.ttl_seconds / 3 if interval is None else interval
        if not 0 < self.interval < registry.ttl_seconds:
            raise ValueError(f"interval must be in (0, ttl={registry.ttl_seconds}), got {self.interval}")
        self._registry = registry
        self._status = status
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker_id: str | None = None
        self._failing = False

    def start(self) -> "Heartbeat":
        if self._thread is not None:
            raise RuntimeError("heartbeat already started")
        self._beat()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self._worker_id}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """End the beats and delete the entry; idempotent."""
        if self._thread is None or self._stopped.is_set():
            return
        self._stopped.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("heartbeat for %s still in a beat after %gs; its key will expire",
                        self._worker_id, timeout)
        try:
            self._registry.remove(self._worker_id)
        except redis.RedisError as exc:
            log.warning("could not remove %s from the registry (%s); its key will expire",
                        self._worker_id, exc)

    def __enter__(self) -> "Heartbeat":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self._beat()
            except Exception as exc:  # the thread must outlive any one failed beat
                if not self._failing:
                    log.warning("heartbeat for %s failed, retrying every %.2fs: %r",
                                self._worker_id, self.interval, exc)
                self._failing = True
                continue
            if self._failing:
                log.info("heartbeat for %s recovered", self._worker_id)
            self._failing = False

    def _beat(self) -> None:
        info = self._status()
        if self._worker_id not in (None, info.worker_id):
            raise ValueError(f"status() changed worker_id from {self._worker_id} to {info.worker_id}")
        self._registry.publish(info)
        self._worker_id = info.worker_id

"""The worker registry: which workers are alive, where they listen, and how loaded they are.

Rules:
- One Redis key per worker, ``{namespace}:worker:{role}:{worker_id}``, holding its ``WorkerInfo`` as
  JSON and expiring ``ttl_seconds`` after the last publish. Redis's expiry is the only liveness
  test: a key that exists is a live worker; a worker that stops beating vanishes within the TTL.
- A worker owns its key: its ``Heartbeat`` republishes every ``ttl / 3`` seconds (two beats may be
  missed before it expires) and deletes the key on a clean stop. The gateway only reads
  (``live``; ``least_loaded`` chooses among them). A worker id belongs to one role.
- ``publish`` stamps ``updated_at`` with the publisher's wall clock; it is informational only.
- Readers skip, and log, entries they cannot parse, so one bad worker cannot stop routing. Unknown
  JSON fields are ignored so that newer workers may add fields; missing ones are an error.
- The Redis client should carry socket timeouts (see ``EmbeddedRedis.client``): they bound every
  call made here, and so every beat.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Callable

import redis

log = logging.getLogger(__name__)

ROLES = ("prefill", "decode", "colocated")
_NAME = re.compile(r"[\w.@:-]+")  # no glob characters, so names are safe inside SCAN patterns
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


class WorkerRegistry:
    """Live workers in Redis: workers ``publish`` and ``remove``; the gateway calls ``live`` once per request."""

    def __init__(self, client: redis.Redis, namespace: str = "tandem", ttl_seconds: float = 5.0) -> None:
        if not _NAME.fullmatch(namespace):
            raise ValueError(f"namespace must match {_NAME.pattern}, got {namespace!r}")
        if ttl_seconds < 0.01:
            raise ValueError(f"ttl_seconds must be at least 0.01, got {ttl_seconds}")
        self._client = client
        self._namespace = namespace
        self.ttl_seconds = ttl_seconds

    def publish(self, info: WorkerInfo) -> None:
        """Write the worker's entry, stamped now, expiring ``ttl_seconds`` from now."""
        stamped = replace(info, updated_at=time.time())
        self._client.set(self._key(info.role, info.worker_id), stamped.to_json(),
                         px=max(1, round(self.ttl_seconds * 1000)))

    def remove(self, worker_id: str) -> None:
        """Delete the worker's entry under every role; a no-op if it is gone already."""
        self._client.delete(*(self._key(role, worker_id) for role in ROLES))

    def live(self, role: str | None = None) -> list[WorkerInfo]:
        """Unexpired workers (of ``role``, if given), sorted by worker_id."""
        pattern = self._key(_check_role(role), "*") if role is not None else self._key("*", "*")
        keys = list(self._client.scan_iter(match=pattern, count=1000))
        if not keys:
            return []
        values = self._client.mget(keys)  # a key that expired since the SCAN reads as None
        workers = [_parse(key, value) for key, value in zip(keys, values) if value is not None]
        return sorted((w for w in workers if w is not None), key=lambda w: w.worker_id)

    def _key(self, role: str, worker_id: str) -> str:
        return f"{self._namespace}:worker:{role}:{worker_id}"


def least_loaded(workers: list[WorkerInfo]) -> WorkerInfo | None:
    """The least loaded of ``workers`` (random among ties), or None for an empty list."""
    if not workers:
        return None
    least = min(w.load for w in workers)
    return random.choice([w for w in workers if w.load <= least + 1e-9])


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return role


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

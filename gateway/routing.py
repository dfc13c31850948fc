"""Worker choice: which decode worker (and which prefill worker) runs a request.

Rules:
- Each gateway keeps a local view of the registry (``RegistryView``), re-read from Redis at most
  once per ``refresh_s`` (``TANDEM_REGISTRY_REFRESH_S``, 1 s) by whichever request needs it first;
  concurrent requests share that one read. A read costs O(live workers), never O(keyspace)
  (services/registry.py), so stored responses cannot slow routing.
- Choice (``route``): per role, the worker that the request's *affinity key* prefers, unless it
  is busy; else the least-loaded live worker (random among ties). Where no prefill/decode pair is
  live but a ``colocated`` worker is, that one runs it whole. Between reads the view adds the
  requests this gateway sent to each worker to its published load, so a burst within one refresh
  spreads instead of piling onto one worker.
- Affinity (KV reuse): ``affinity_key`` hashes a conversation's opening — its messages up to and
  including the first user message — which every later turn repeats (a ``previous_response_id``
  chain carries the same items; a Chat client resends its history). Rendezvous hashing maps the
  key to one worker per role among the live ones, so every turn of a conversation goes where its
  last turn ran — where the prefix caches hold its KV — without any stored placement: the choice
  is rebuilt from the registry alone. Conversations that open the same way share a worker, which
  is right for the cache too. "Busy": the preferred worker's load exceeds the least-loaded one's
  by more than ``AFFINITY_SLACK`` (half a batch); a worker that left is simply not a candidate.
- A worker a call found failing (UNAVAILABLE) is ``mark_down``: not routed to until it is
  re-published, i.e. until a registry read that started after the drop shows it with another
  ``updated_at`` than the first such read did (its next heartbeat, within ``ttl / 3``). A dead
  worker never beats again, so it stays out until its entry expires. A worker whose gRPC health
  is not SERVING or does not answer (``WorkerBackend.ready``) is out until its health says
  SERVING again (``set_healthy``), heartbeat or not.
- The registry unreachable (Redis down or hung): requests keep routing from the last view read
  while it is younger than ``stale_s`` (``TANDEM_REGISTRY_STALE_S``, 30 s); the gRPC health
  checks and ``mark_down`` still take failing workers out of it. A read is tried again at most
  once per ``refresh_s``, and no request waits on one longer than ``READ_WAIT_S`` while the view
  is usable or reads are failing (a hung Redis would hold it for the socket timeouts). Past ``stale_s`` (or before any read succeeded): ``BackendUnavailable`` (a 503).
  ``unreachable_for()`` says how long reads have been failing (``/ready`` reports it).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from collections import Counter

import redis
import redis.asyncio as aioredis

from services.registry import LIVE, WorkerInfo, parse_live, registry_keys

from .backend import BackendUnavailable

log = logging.getLogger(__name__)

AFFINITY_SLACK = 0.5    # load units (a full batch is 1.0) a preferred worker may be above the least
READ_WAIT_S = 0.5       # the longest a request waits on a registry read while the last view is usable


def affinity_key(messages: list[dict[str, str]]) -> bytes:
    """The key of a conversation: its messages up to and including the first user message."""
    opening = []
    for message in messages:
        opening.append([message["role"], message["content"]])
        if message["role"] == "user":
            break
    return hashlib.blake2b(json.dumps(opening).encode(), digest_size=16).digest()


class RegistryView:
    def __init__(self, client: aioredis.Redis, namespace: str = "tandem", refresh_s: float = 1.0,
                 stale_s: float = 30.0):
        if refresh_s <= 0:
            raise ValueError(f"refresh_s must be > 0, got {refresh_s}")
        if stale_s < 0:
            raise ValueError(f"stale_s must be >= 0, got {stale_s}")
        self._keys = registry_keys(namespace)
        self._live = client.register_script(LIVE)
        self.refresh_s = refresh_s
        self.stale_s = stale_s
        self._workers: list[WorkerInfo] = []
        self._read_at = float("-inf")           # when the last successful read ended
        self._retry_at = float("-inf")          # no read before this (after a failed one)
        self._failing_since: float | None = None
        self._error = "the worker registry has not been read yet"
        self._reading: asyncio.Task | None = None
        self._reading_since = 0.0
        self._sent: Counter[str] = Counter()
        self._down: dict[str, tuple[float, float | None]] = {}   # worker_id -> (dropped at, updated_at)
        self._unhealthy: set[str] = set()

    async def workers(self, max_age: float | None = None) -> list[WorkerInfo]:
        """The live workers, read from Redis if the view is older than ``refresh_s`` (or than
        ``max_age``, when smaller: readiness checks); while Redis is unreachable, the last view
        until it is ``stale_s`` old (module rules)."""
        now = time.monotonic()
        refresh = self.refresh_s if max_age is None else min(self.refresh_s, max_age)
        if now - self._read_at >= refresh and now >= self._retry_at:
            if self._reading is None:
                self._reading, self._reading_since = asyncio.ensure_future(self._read()), now
                self._reading.add_done_callback(self._read_done)
            bounded = self._usable() or self.unreachable_for() is not None
            await asyncio.wait({self._reading}, timeout=READ_WAIT_S if bounded else None)
        if not self._usable():
            raise BackendUnavailable(self._unusable())
        return self._workers

    def unreachable_for(self) -> float | None:
        """Seconds the registry has not answered: since the first of the failing reads, or since
        a read still unanswered after ``READ_WAIT_S`` started; None while it answers."""
        now = time.monotonic()
        if self._failing_since is not None:
            return now - self._failing_since
        if self._reading is not None and now - self._reading_since > READ_WAIT_S:
            return now - self._reading_since
        return None

    @property
    def age(self) -> float:
        """Seconds since the view was last read successfully."""
        return time.monotonic() - self._read_at

    def _usable(self) -> bool:
        return self.age < max(self.stale_s, self.refresh_s)

    def _unusable(self) -> str:
        down = self.unreachable_for()
        if down is None:
            return self._error
        last = "never read" if self._read_at < 0 else f"last read {self.age:.1f} s ago"
        return (f"worker registry unreachable for {down:.1f} s ({self._error}); the view was "
                f"{last}, and is used for {self.stale_s:g} s")

    def _read_done(self, reading: asyncio.Task) -> None:
        if self._reading is reading:
            self._reading = None
        if not reading.cancelled():
            reading.exception()     # retrieved: a failure is recorded in the view, not raised

    async def routable(self) -> list[WorkerInfo]:
        """The live workers not marked down or unhealthy."""
        return [w for w in await self.workers()
                if w.worker_id not in self._down and w.worker_id not in self._unhealthy]

    def mark_down(self, worker_id: str) -> None:
        """Stop routing to ``worker_id`` until it is re-published (see the module rules)."""
        self._down.setdefault(worker_id, (time.monotonic(), None))

    def set_healthy(self, worker_id: str, healthy: bool) -> None:
        """What ``worker_id``'s gRPC health said: SERVING (True) or not/no answer (False)."""
        if healthy:
            self._unhealthy.discard(worker_id)
            self._down.pop(worker_id, None)
        else:
            self._unhealthy.add(worker_id)

    async def route(self, affinity: bytes = b"") -> tuple[WorkerInfo, WorkerInfo | None]:
        """(decode worker, prefill worker), or (colocated worker, None) when no pair is live;
        ``affinity`` (``affinity_key``) prefers the workers that ran the conversation so far."""
        workers = await self.routable()
        decode, prefill = self._choose(workers, "decode", affinity), self._choose(workers, "prefill", affinity)
        if decode is None or prefill is None:
            colocated = self._choose(workers, "colocated", affinity)
            if colocated is not None:
                return self._sending(colocated), None
            raise BackendUnavailable(f"no live {'decode' if decode is None else 'prefill'} worker")
        return self._sending(decode), self._sending(prefill)

    def _choose(self, workers: list[WorkerInfo], role: str, affinity: bytes) -> WorkerInfo | None:
        candidates = [w for w in workers if w.role == role]
        least = least_loaded(candidates, self._sent)
        if not affinity or least is None:
            return least
        preferred = max(candidates, key=lambda w: hashlib.blake2b(affinity + w.worker_id.encode(),
                                                                  digest_size=8).digest())
        busy = self._load(preferred) > self._load(least) + AFFINITY_SLACK
        return least if busy else preferred

    def _load(self, worker: WorkerInfo) -> float:
        return worker.load + self._sent[worker.worker_id] / worker.max_num_seqs

    def _sending(self, worker: WorkerInfo) -> WorkerInfo:
        self._sent[worker.worker_id] += 1
        return worker

    async def _read(self) -> None:
        started = time.monotonic()
        try:
            reply = await self._live(keys=self._keys)
        except redis.RedisError as exc:
            self._failing_since = self._failing_since or started
            self._retry_at = time.monotonic() + self.refresh_s
            self._error = f"{type(exc).__name__}: {exc}"
            log.warning("worker registry unreachable: %r", exc)   # its address: logs only
            raise BackendUnavailable(self._unusable()) from exc
        self._workers, self._read_at, self._failing_since = parse_live(reply), time.monotonic(), None
        self._sent.clear()
        self._forget_republished(started)

    def _forget_republished(self, read_started: float) -> None:
        """Bring back the workers marked down that beat since; forget those that left."""
        live = {w.worker_id: w.updated_at for w in self._workers}
        self._unhealthy &= live.keys()
        for worker_id, (dropped, seen) in list(self._down.items()):
            if worker_id not in live:
                del self._down[worker_id]
            elif read_started > dropped and seen is None:
                self._down[worker_id] = (dropped, live[worker_id])
            elif seen is not None and live[worker_id] != seen:
                del self._down[worker_id]


def least_loaded(workers: list[WorkerInfo], sent: Counter[str] | None = None) -> WorkerInfo | None:
    """The least loaded of ``workers`` (random among ties), or None for an empty list.

    ``sent``: requests sent to each worker since its load was published, each counted as one
    more running sequence.
    """
    if not workers:
        return None
    sent = sent or Counter()
    loads = {w.worker_id: w.load + sent[w.worker_id] / w.max_num_seqs for w in workers}
    least = min(loads.values())
    return random.choice([w for w in workers if loads[w.worker_id] <= least + 1e-9])

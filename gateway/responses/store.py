"""Stored state of the Responses API in Redis: response objects, input items, event logs, cancels.

Rules:
- Keys, for a response id ``resp_x`` under namespace ``tandem``::

      tandem:resp:{resp_x}          the Response object (JSON)
      tandem:resp:{resp_x}:items    its full input item list (JSON array: history + new input)
      tandem:resp:{resp_x}:events   its streamed events (a Redis Stream, one JSON event per entry)
      tandem:resp:{resp_x}:cancel   present once a cancel was requested
      tandem:resp:{resp_x}:owner    the project that created it (gateway/auth.py); a record
                                    without one belongs to project ``default``
      tandem:resp:{resp_x}:lease    present while a replica runs it (its owner id; ``lease_s``)
      tandem:cancels                pub/sub channel: the id of every response whose cancel was asked

  The braces are literal: a Redis Cluster hash tag, so one response's keys share a slot and the
  MULTI/EXEC and Lua calls below stay legal on a cluster.
- Tenancy: ``fetch`` and ``fetch_items`` answer 404 for another project's response (not 403: an
  id that exists is not confirmed). Every endpoint reaches a stored response through them first,
  so the owner never appears in the Response object a client sees.
- Every key carries a TTL (``ttl_seconds``, 30 days by default, like OpenAI). ``create`` sets it on
  the response and its items; ``update`` keeps it (SET ... XX KEEPTTL). The events stream gets its
  TTL on the append that creates it (the response's remaining TTL, or ``ttl_seconds`` if the
  response is gone) and keeps it. Redis 6.2 has no EXPIRE ... NX, so append and expiry are one Lua
  script, which also takes a whole batch of events in one round trip (``EventLog``).
- An event's ``sequence_number`` is its stream entry id (``0-{n+1}``): Redis itself rejects an
  append that is not after the last stored event, and ``events_after(n)`` is one XREAD from there
  (``block_ms``: XREAD BLOCK, in slices shorter than the socket timeout).
- Ids are checked against ``resp_[A-Za-z0-9_-]`` before they reach a key. A malformed id reads as
  "not found" (None, [], False); writing one is a caller bug and raises ValueError.
- Leases (gateway/responses/lease.py): ``create`` of a running record (``queued`` /
  ``in_progress``) sets the lease of the replica that will run it, which renews it every
  ``lease_s / 3`` (``renew_leases``). ``update`` is a check-and-set: it writes only while the
  stored record is still running (one Lua call), and its final write drops the lease. So a runner
  whose response was declared failed (``fail_orphan``) cannot bring it back.
- ``fail_orphan``: a running record whose lease is gone (its replica died) is set ``failed`` and a
  ``response.failed`` event is appended at the next sequence number, in one WATCH/MULTI
  transaction over the record, its lease and its events (a renewal or an append in between makes
  it look again).
- Values are JSON, never pickle. ``create`` replaces any record with the same id (ids are random)
  and drops its old events and cancel flag.
- Redis unreachable, timing out or still loading its AOF raises ``StoreUnavailable``: an
  ``APIError`` 503, never a "not found" and never a fake success. The client's socket timeouts
  bound every call. A gateway built without Redis (``client=None``) raises it on every call.
- All I/O is ``redis.asyncio``: nothing here blocks the event loop.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import redis
import redis.asyncio as aioredis

from ..auth import DEFAULT_PROJECT
from ..errors import APIError
from .object import ACTIVE

ORPHANED = ("The gateway running this response stopped before it finished (its lease expired); "
            "the response did not complete.")

log = logging.getLogger(__name__)

_ID = re.compile(r"resp_[A-Za-z0-9_-]{1,200}")
_NAMESPACE = re.compile(r"[\w.@:-]+")  # no glob characters
_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                redis.exceptions.BusyLoadingError)
_FIELD = "json"  # the one field of every stream entry

# KEYS: events stream, response. ARGV: fallback TTL in ms, then (entry id, event JSON) pairs.
_APPEND = """
for i = 2, #ARGV, 2 do
    redis.call('XADD', KEYS[1], ARGV[i], 'json', ARGV[i + 1])
end
if redis.call('PTTL', KEYS[1]) == -1 then
    local ttl = redis.call('PTTL', KEYS[2])
    if ttl <= 0 then ttl = tonumber(ARGV[1]) end
    redis.call('PEXPIRE', KEYS[1], ttl)
end
"""

# KEYS: response, lease. ARGV: the new response JSON, "1" to drop the lease (a final write).
# 1: written; 0: no record; -1: the stored record has ended already (nothing written).
_UPDATE_ACTIVE = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local status = cjson.decode(current)['status']
if status ~= 'queued' and status ~= 'in_progress' then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
if ARGV[2] == '1' then redis.call('DEL', KEYS[2]) end
return 1
"""


class StoreUnavailable(APIError):
    """Redis could not be reached: a 503 ``store_unavailable`` (never 404, never a fake success)."""

    def __init__(self, reason: str):
        super().__init__(503, f"The response store is unavailable: {reason}", type="server_error",
                         code="store_unavailable")


class ResponseStore:
    """Responses, input items, event logs and cancels of one namespace, shared by all replicas."""

    def __init__(self, client: aioredis.Redis | None, namespace: str = "tandem",
                 ttl_seconds: int = 30 * 86400, lease_s: float = 10.0) -> None:
        if not _NAMESPACE.fullmatch(namespace):
            raise ValueError(f"namespace must match {_NAMESPACE.pattern}, got {namespace!r}")
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds < 1:
            raise ValueError(f"ttl_seconds must be a positive int, got {ttl_seconds!r}")
        if not lease_s > 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s!r}")
        self._client = client
        self.lease_s = lease_s
        self._namespace = namespace
        self.ttl_seconds = ttl_seconds
        self._append = client.register_script(_APPEND) if client is not None else None
        self._update = client.register_script(_UPDATE_ACTIVE) if client is not None else None
        self._block_slice_ms = _block_slice_ms(client)

    @property
    def cancel_channel(self) -> str:
        return f"{self._namespace}:cancels"

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless Redis answers."""
        with self._reachable("ping"):
            await self._client.ping()

    # -- response objects ------------------------------------------------------------------------
    async def create(self, response: dict, input_items: list[dict],
                     project: str = DEFAULT_PROJECT, lease: str | None = None) -> None:
        """Store a new response of ``project`` and its full input item list, all expiring in
        ``ttl_seconds``; ``lease``: the id of the replica that will run it (a running record)."""
        key = self._write_key(_response_id(response))
        items = _json_list(input_items)
        if not isinstance(project, str) or not project:
            raise ValueError(f"project must be a non-empty str, got {project!r}")
        with self._reachable("create"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(key, _dumps(response), ex=self.ttl_seconds)
                pipe.set(f"{key}:items", items, ex=self.ttl_seconds)
                pipe.set(f"{key}:owner", project, ex=self.ttl_seconds)
                pipe.delete(f"{key}:events", f"{key}:cancel", f"{key}:lease")
                if lease is not None:
                    pipe.set(f"{key}:lease", lease, px=self._lease_ms)
                await pipe.execute()

    async def update(self, response: dict) -> bool:
        """Replace a stored response that is still running, keeping its remaining TTL (a final
        status drops its lease); False if it no longer exists or has ended already (it stays as
        it is: a runner declared failed cannot bring its response back)."""
        key = self._key(_response_id(response))
        if key is None:
            return False
        final = "0" if response.get("status") in ACTIVE else "1"
        with self._reachable("update"):
            return await self._update(keys=[key, f"{key}:lease"], args=[_dumps(response), final]) == 1

    # -- leases ----------------------------------------------------------------------------------
    @property
    def _lease_ms(self) -> int:
        return max(1, int(self.lease_s * 1000))

    async def renew_leases(self, response_ids: list[str], owner: str) -> None:
        """Extend ``owner``'s leases on ``response_ids`` by ``lease_s`` (one round trip)."""
        keys = [f"{self._write_key(response_id)}:lease" for response_id in response_ids]
        with self._reachable("renew_leases"):
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.set(key, owner, px=self._lease_ms)
                await pipe.execute()

    async def leased(self, response_id: str) -> bool:
        """Whether a replica holds the response's lease (one EXISTS; the common case of a read)."""
        return await self._exists(response_id, "lease", "leased")

    async def fail_orphan(self, response_id: str, message: str) -> dict | None:
        """The response as it stands; one still running whose lease is gone is set ``failed``
        first (``message``), with a ``response.failed`` event after its last logged event."""
        key = self._key(response_id)
        if key is None:
            return None
        with self._reachable("fail_orphan"):
            async with self._client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        return await self._fail_if_orphaned(pipe, key, message)
                    except redis.exceptions.WatchError:
                        continue     # renewed, appended or ended meanwhile: look again

    async def _fail_if_orphaned(self, pipe, key: str, message: str) -> dict | None:
        await pipe.watch(key, f"{key}:lease", f"{key}:events")
        raw, leased = await pipe.get(key), await pipe.exists(f"{key}:lease")
        response = None if raw is None else json.loads(raw)
        if response is None or response["status"] not in ACTIVE or leased:
            await pipe.unwatch()
            return response
        last = await pipe.xrevrange(f"{key}:events", count=1)
        seq = int(_text(last[0][0]).split("-")[1]) if last else 0     # entry 0-(n+1) is event n
        ttl_ms = await pipe.pttl(key)
        response = {**response, "status": "failed", "completed_at": None,
                    "error": {"code": "server_error", "message": message}}
        pipe.multi()
        pipe.set(key, _dumps(response), xx=True, keepttl=True)
        pipe.xadd(f"{key}:events", {_FIELD: _dumps({"type": "response.failed", "sequence_number": seq,
                                                    "response": response})}, id=_entry_id(seq))
        pipe.pexpire(f"{key}:events", ttl_ms if ttl_ms > 0 else self.ttl_seconds * 1000)
        await pipe.execute()
        return response

    async def get(self, response_id: str) -> dict | None:
        return await self._get_json(response_id, "", "get")

    async def input_items(self, response_id: str) -> list[dict] | None:
        """The input items stored with the response (oldest first), or None if it is gone."""
        return await self._get_json(response_id, ":items", "input_items")

    async def owned(self, response_id: str, suffix: str = "") -> tuple[Any, str]:
        """The response (``suffix=":items"``: its items) and its owner, in one round trip (MGET
        of two keys in one hash slot); (None, owner) if it is gone."""
        key = self._key(response_id)
        if key is None:
            return None, DEFAULT_PROJECT
        with self._reachable("get"):
            value, owner = await self._client.mget(f"{key}{suffix}", f"{key}:owner")
        owner = owner.decode() if isinstance(owner, bytes) else owner
        return (None if value is None else json.loads(value)), owner or DEFAULT_PROJECT

    async def delete(self, response_id: str) -> bool:
        """Drop the response, its items, events and cancel flag; False if there was no response."""
        key = self._key(response_id)
        if key is None:
            return False
        with self._reachable("delete"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.delete(f"{key}:items", f"{key}:events", f"{key}:cancel", f"{key}:owner",
                            f"{key}:lease")
                existed, _ = await pipe.execute()
        return existed == 1

    # -- event log -------------------------------------------------------------------------------
    async def append_events(self, response_id: str, events: list[dict]) -> None:
        """Append ``events`` in one round trip; each ``sequence_number`` must be past the last
        stored one (ValueError; the events before the offending one are kept)."""
        key = self._write_key(response_id)
        args: list[Any] = [self.ttl_seconds * 1000]
        seqs = []
        for event in events:
            seq = event.get("sequence_number") if isinstance(event, dict) else None
            if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
                raise ValueError(f"event must be a dict with an int sequence_number >= 0, got {event!r}")
            args += [_entry_id(seq), _dumps(event)]
            seqs.append(seq)
        try:
            with self._reachable("append_events"):
                await self._append(keys=[f"{key}:events", key], args=args)
        except redis.exceptions.ResponseError as exc:
            if "equal or smaller" not in str(exc):
                raise
            raise ValueError(f"{response_id}: sequence_number {', '.join(map(str, seqs))}: not all "
                             f"after the last stored event") from exc

    async def has_events(self, response_id: str) -> bool:
        """Whether the response has an event log (without reading it)."""
        return await self._exists(response_id, "events", "has_events")

    async def events_after(self, response_id: str, after: int, block_ms: int = 0) -> list[dict]:
        """Events with ``sequence_number > after``, in order. If there are none yet and
        ``block_ms > 0``, waits up to ``block_ms`` for the first new ones (XREAD BLOCK)."""
        if isinstance(after, bool) or not isinstance(after, int):
            raise ValueError(f"after must be an int, got {after!r}")
        if block_ms < 0:
            raise ValueError(f"block_ms must be >= 0, got {block_ms}")
        key = self._key(response_id)
        if key is None:
            return []
        streams = {f"{key}:events": _entry_id(max(after, -1))}
        deadline = time.monotonic() + block_ms / 1000
        with self._reachable("events_after"):
            while True:
                left_ms = int((deadline - time.monotonic()) * 1000)
                block = min(left_ms, self._block_slice_ms) if left_ms > 0 else None  # 0 = forever
                reply = await self._client.xread(streams, block=block)
                if reply or block is None:
                    return _events(reply)

    # -- cancellation ----------------------------------------------------------------------------
    async def request_cancel(self, response_id: str) -> None:
        """Flag a response for cancellation and tell every replica (``cancels``)."""
        key = self._write_key(response_id)
        with self._reachable("request_cancel"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(f"{key}:cancel", "1", ex=self.ttl_seconds)
                pipe.publish(self.cancel_channel, response_id)
                await pipe.execute()

    async def cancel_requested(self, response_id: str) -> bool:
        return await self._exists(response_id, "cancel", "cancel_requested")

    @asynccontextmanager
    async def cancels(self) -> AsyncIterator[AsyncIterator[str]]:
        """Subscribe to cancel requests; yields an iterator of response ids (one per request).

        Pub/sub delivers only while subscribed: after (re)subscribing, check the flags of the
        responses you run (``cancel_requested``) to catch requests made in between.
        """
        with self._reachable("cancels"):
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe(self.cancel_channel)
        try:
            yield self._cancel_ids(pubsub)
        finally:
            await pubsub.aclose()

    async def _cancel_ids(self, pubsub) -> AsyncIterator[str]:
        while True:
            with self._reachable("cancels"):
                message = await pubsub.get_message(timeout=self._block_slice_ms / 1000)
            if message is not None and message["type"] == "message":
                data = message["data"]
                yield data.decode() if isinstance(data, bytes) else data
            elif message is None:
                yield ""   # a tick: lets the caller stop between messages

    # -- keys ------------------------------------------------------------------------------------
    async def _get_json(self, response_id: str, suffix: str, operation: str) -> Any:
        key = self._key(response_id)
        if key is None:
            return None
        with self._reachable(operation):
            value = await self._client.get(f"{key}{suffix}")
        return None if value is None else json.loads(value)

    async def _exists(self, response_id: str, suffix: str, operation: str) -> bool:
        key = self._key(response_id)
        if key is None:
            return False
        with self._reachable(operation):
            return await self._client.exists(f"{key}:{suffix}") == 1

    def _key(self, response_id: str) -> str | None:
        """The response's key, or None for an id that could reach other keys."""
        if not isinstance(response_id, str) or not _ID.fullmatch(response_id):
            return None
        return f"{self._namespace}:resp:{{{response_id}}}"

    def _write_key(self, response_id: str) -> str:
        key = self._key(response_id)
        if key is None:
            raise ValueError(f"response id must match {_ID.pattern}, got {response_id!r}")
        return key

    @contextmanager
    def _reachable(self, operation: str) -> Iterator[None]:
        """Redis unreachable → StoreUnavailable; other Redis errors pass through."""
        if self._client is None:
            raise StoreUnavailable("this gateway has no response store configured")
        try:
            yield
        except _UNAVAILABLE as exc:
            log.warning("Redis %s failed: %r", operation, exc)   # its address: logs only
            raise StoreUnavailable(f"Redis {operation} failed ({type(exc).__name__})") from exc


def _block_slice_ms(client: aioredis.Redis | None) -> int:
    """The longest XREAD BLOCK that safely fits inside the client's socket timeout (half of it)."""
    timeout = client.connection_pool.connection_kwargs.get("socket_timeout") if client else None
    return 60_000 if timeout is None else max(1, int(timeout * 500))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry_id(sequence_number: int) -> str:
    """The stream entry id of an event: ids start at 0-1, sequence numbers at 0."""
    return f"0-{sequence_number + 1}"


def _response_id(response: dict) -> str:
    if not isinstance(response, dict):
        raise ValueError(f"response must be a dict, got {type(response).__name__}")
    return response.get("id")


def _json_list(items: list[dict]) -> str:
    if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("id"), str)
                                              for i in items):
        raise ValueError("input_items must be a list of dicts, each with a str 'id'")
    return _dumps(items)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _events(reply: Any) -> list[dict]:
    """Parse an XREAD reply for one stream (RESP2: [[key, entries]]; RESP3: {key: [entries]})."""
    if not reply:
        return []
    entries = next(iter(reply.values()))[0] if isinstance(reply, dict) else reply[0][1]
    return [json.loads(_field(fields)) for _, fields in entries]


def _field(fields: dict) -> bytes | str:
    """The event JSON of one entry, whether or not the client decodes responses."""
    for name in (_FIELD.encode(), _FIELD):
        if name in fields:
            return fields[name]
    raise ValueError(f"stream entry without a {_FIELD!r} field: {fields!r}")


# -- what the endpoints need: a response that exists, or a 404 naming the parameter ---------------
def check_id(response_id: str, param: str) -> None:
    """An id that cannot be a response id (no ``resp`` prefix) is a 400 naming ``param``."""
    if not response_id.startswith("resp"):
        raise APIError.invalid(f"Invalid '{param}': '{response_id}'. Expected an ID that begins "
                               "with 'resp'.", param)


def not_found(response_id: str, param: str) -> APIError:
    return APIError(404, f"Response with id '{response_id}' not found.", param=param,
                    code="response_not_found")


async def fetch(store: ResponseStore, response_id: str, param: str = "response_id",
                project: str = DEFAULT_PROJECT) -> dict:
    """The stored response of ``project``; 400 for a malformed id, 404 if it is missing, expired,
    deleted or another project's. A running one whose runner's lease is gone is ``failed`` first
    (``fail_orphan``)."""
    response = await _fetch_owned(store, response_id, "", param, project)
    if response["status"] in ACTIVE and not await store.leased(response_id):
        response = await store.fail_orphan(response_id, ORPHANED)
        if response is None:
            raise not_found(response_id, param)
    return response


async def fetch_items(store: ResponseStore, response_id: str, param: str = "response_id",
                      project: str = DEFAULT_PROJECT) -> list[dict]:
    """The input items of ``project``'s stored response (404 as ``fetch``)."""
    return await _fetch_owned(store, response_id, ":items", param, project)


async def _fetch_owned(store: ResponseStore, response_id: str, suffix: str, param: str,
                       project: str) -> Any:
    check_id(response_id, param)
    value, owner = await store.owned(response_id, suffix)
    if value is None or owner != project:
        raise not_found(response_id, param)
    return value

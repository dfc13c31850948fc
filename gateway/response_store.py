"""Stored state of the OpenAI Responses API: response objects, their input items, event logs, cancels.

Rules:
- Keys, for a response id ``resp_x`` under namespace ``tandem``::

      tandem:resp:{resp_x}          the Response object (JSON)
      tandem:resp:{resp_x}:items    its full input item list (JSON array: history + new input)
      tandem:resp:{resp_x}:events   its streamed events (a Redis Stream, one JSON event per entry)
      tandem:resp:{resp_x}:cancel   present once a cancel was requested

  The braces are literal: they are a Redis Cluster hash tag, so one response's keys share a slot and
  the MULTI/EXEC and Lua calls below stay legal on a cluster.
- Every key carries a TTL (``ttl_seconds``, 30 days by default, like OpenAI). ``create`` sets it on
  the response and its items; ``update`` keeps it (SET ... XX KEEPTTL). The events stream gets its
  TTL on the append that creates it (the response's remaining TTL, or ``ttl_seconds`` if the
  response is gone) and keeps it: later appends never extend it. Redis 6.2 has no EXPIRE ... NX, so
  the append and the expiry are one Lua script.
- An event's ``sequence_number`` is its stream entry id (``0-{n+1}``): Redis itself rejects an
  append that is not after the last stored event, and ``events_after(n)`` is one XREAD from there.
- Ids are checked against ``resp_[A-Za-z0-9_-]`` before they reach a key. A malformed id reads as
  "not found" (None, [], False, -2; ``update`` raises KeyError); writing one (``create``,
  ``append_event``, ``request_cancel``) is a caller bug and raises ValueError.
- Values are JSON, never pickle. ``create`` replaces any record with the same id (ids are random)
  and drops its old events and cancel flag.
- Redis being unreachable, timing out or still loading its AOF raises ``StoreUnavailable`` (the API
  answers 503), never a "not found" or a fake success. The client should carry socket timeouts
  (see ``EmbeddedRedis.client``): they bound every call. A blocking ``events_after`` waits in
  slices shorter than the socket timeout, so a long wait is not mistaken for a dead server.
- Every method does blocking socket I/O: from async code, call it in a worker thread.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

_ID = re.compile(r"resp_[A-Za-z0-9_-]{1,200}")
_NAMESPACE = re.compile(r"[\w.@:-]+")  # no glob characters, so keys are safe inside SCAN patterns
_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                redis.exceptions.BusyLoadingError)
_FIELD = "json"  # the one field of every stream entry

# KEYS: events stream, response. ARGV: entry id, event JSON, fallback TTL in ms.
_APPEND = """
redis.call('XADD', KEYS[1], ARGV[1], ARGV[2], ARGV[3])
if redis.call('PTTL', KEYS[1]) == -1 then
    local ttl = redis.call('PTTL', KEYS[2])
    if ttl <= 0 then ttl = tonumber(ARGV[4]) end
    redis.call('PEXPIRE', KEYS[1], ttl)
end
"""


class StoreUnavailable(Exception):
    """Redis could not be reached; the API answers 503 (never 404, never a fake success)."""


class ResponseStore:
    """Responses, input items, event logs and cancel flags of one namespace, shared by all replicas."""

    def __init__(self, client: redis.Redis, namespace: str = "tandem", ttl_seconds: int = 30 * 86400) -> None:
        if not _NAMESPACE.fullmatch(namespace):
            raise ValueError(f"namespace must match {_NAMESPACE.pattern}, got {namespace!r}")
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds < 1:
            raise ValueError(f"ttl_seconds must be a positive int, got {ttl_seconds!r}")
        self._client = client
        self._namespace = namespace
        self.ttl_seconds = ttl_seconds
        self._append = client.register_script(_APPEND)
        self._block_slice_ms = _block_slice_ms(client)

    # -- response objects ------------------------------------------------------------------------

    def create(self, response: dict, input_items: list[dict]) -> None:
        """Store a new response and its full input item list, both expiring in ``ttl_seconds``."""
        key = self._write_key(_response_id(response))
        items = _json_list(input_items)
        with _reachable("create"), self._client.pipeline(transaction=True) as pipe:
            pipe.set(key, _dumps(response), ex=self.ttl_seconds)
            pipe.set(f"{key}:items", items, ex=self.ttl_seconds)
            pipe.delete(f"{key}:events", f"{key}:cancel")
            pipe.execute()

    def update(self, response: dict) -> None:
        """Replace a stored response, keeping its remaining TTL; KeyError if it no longer exists."""
        response_id = _response_id(response)
        key = self._key(response_id)
        with _reachable("update"):
            stored = key is not None and self._client.set(key, _dumps(response), xx=True, keepttl=True)
        if not stored:
            raise KeyError(response_id)

    def get(self, response_id: str) -> dict | None:
        key = self._key(response_id)
        if key is None:
            return None
        with _reachable("get"):
            value = self._client.get(key)
        return None if value is None else json.loads(value)

    def input_items(self, response_id: str) -> list[dict] | None:
        """The input items stored with the response (oldest first), or None if it is gone."""
        key = self._key(response_id)
        if key is None:
            return None
        with _reachable("input_items"):
            value = self._client.get(f"{key}:items")
        return None if value is None else json.loads(value)

    def delete(self, response_id: str) -> bool:
        """Drop the response, its items, events and cancel flag; False if there was no response."""
        key = self._key(response_id)
        if key is None:
            return False
        with _reachable("delete"), self._client.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.delete(f"{key}:items", f"{key}:events", f"{key}:cancel")
            existed, _ = pipe.execute()
        return existed == 1

    def ttl(self, response_id: str) -> int:
        """Seconds until the response expires: -2 if it does not exist, -1 if it never expires."""
        key = self._key(response_id)
        if key is None:
            return -2
        with _reachable("ttl"):
            return self._client.ttl(key)

    # -- event log -------------------------------------------------------------------------------

    def append_event(self, response_id: str, event: dict) -> None:
        """Append one event; its ``sequence_number`` must be past the last stored one (ValueError)."""
        key = self._write_key(response_id)
        seq = event.get("sequence_number") if isinstance(event, dict) else None
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValueError(f"event must be a dict with an int sequence_number >= 0, got {event!r}")
        try:
            with _reachable("append_event"):
                self._append(keys=[f"{key}:events", key],
                             args=[_entry_id(seq), _FIELD, _dumps(event), self.ttl_seconds * 1000])
        except redis.exceptions.ResponseError as exc:
            if "equal or smaller" not in str(exc):
                raise
            raise ValueError(f"{response_id}: sequence_number {seq} is not after the last stored "
                             f"event") from exc

    def has_events(self, response_id: str) -> bool:
        """Whether the response has an event log (without reading it)."""
        return self._exists(response_id, "events", "has_events")

    def events_after(self, response_id: str, after: int, block_ms: int = 0) -> list[dict]:
        """Events with ``sequence_number > after``, in order.

        If there are none yet and ``block_ms > 0``, waits up to ``block_ms`` for the first new ones
        (XREAD BLOCK) and returns what arrived, or [] when the wait ran out.
        """
        if isinstance(after, bool) or not isinstance(after, int):
            raise ValueError(f"after must be an int, got {after!r}")
        if block_ms < 0:
            raise ValueError(f"block_ms must be >= 0, got {block_ms}")
        key = self._key(response_id)
        if key is None:
            return []
        streams = {f"{key}:events": _entry_id(max(after, -1))}
        deadline = time.monotonic() + block_ms / 1000
        with _reachable("events_after"):
            while True:
                left_ms = int((deadline - time.monotonic()) * 1000)
                block = min(left_ms, self._block_slice_ms) if left_ms > 0 else None  # 0 = forever
                reply = self._client.xread(streams, block=block)
                if reply or block is None:
                    return _events(reply)

    # -- cancellation ----------------------------------------------------------------------------

    def request_cancel(self, response_id: str) -> None:
        """Flag a background response for cancellation; every replica sees it via ``cancel_requested``."""
        key = self._write_key(response_id)
        with _reachable("request_cancel"):
            self._client.set(f"{key}:cancel", "1", ex=self.ttl_seconds)

    def cancel_requested(self, response_id: str) -> bool:
        return self._exists(response_id, "cancel", "cancel_requested")

    # -- keys ------------------------------------------------------------------------------------

    def _exists(self, response_id: str, suffix: str, operation: str) -> bool:
        key = self._key(response_id)
        if key is None:
            return False
        with _reachable(operation):
            return self._client.exists(f"{key}:{suffix}") == 1

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
def _reachable(operation: str) -> Iterator[None]:
    """Turn "Redis is unreachable" errors into StoreUnavailable; other Redis errors pass through."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"response store unavailable: Redis {operation} failed "
                               f"({type(exc).__name__}: {exc})") from exc


def _block_slice_ms(client: redis.Redis) -> int:
    """The longest XREAD BLOCK that safely fits inside the client's socket timeout (half of it)."""
    timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
    return 60_000 if timeout is None else max(1, int(timeout * 500))


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


def _dumps(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _events(reply) -> list[dict]:
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

"""One response being generated: its Generation driven to the end, its events, its stored record.

Life of a ``ResponseRun`` (the same for plain, streamed and background responses):
1. ``create_record()`` stores the Response (``in_progress``, or ``queued`` in background) with its
   full input item list, so it can be retrieved while it runs (store=true only).
2. ``start()`` waits for the first token. A foreground request calls it before answering, so that a
   refusal or a failure before any token is an HTTP error (and ``discard_record()`` drops the
   record); a background run calls it inside ``events()``, where such a failure becomes a
   ``failed`` response.
3. ``events()`` yields the events of reference §2.3 in order. With an event log (stored streaming
   and background responses) each one is queued on the response's ``EventLog`` as it is yielded:
   the log is written in batches beside the run, so a token never waits for Redis, and any replica
   can replay and follow it (event_log.py states what a crash can lose).
4. At the end the closing events are logged and flushed, then the record is replaced by the final
   Response, and only then are the closing events yielded: a client that has seen
   ``response.completed`` can retrieve the completed response, and replay all of it, anywhere.

Ownership: the run owns its Generation and closes it however it ends (closing aborts the request on
the workers and frees its KV). A run stopped from outside (client gone, background cancel) records
``cancelled`` — or ``failed`` with a ``response.failed`` event when its replica is stopping
(lease.py); that save runs as its own task, so a cancelled caller cannot interrupt it. A stored
run holds its replica's lease on the record from ``create_record`` until its final save (or
until it is dropped), so another replica can tell a live run from an orphan (lease.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, AsyncIterator, Callable, Coroutine

from ..errors import APIError
from ..generation import Generation
from ..tools.calls import ToolOutput
from ..tools.parser import ArgumentsDelta, CallClosed, CallOpened, TextDelta
from .event_log import EventLog
from .events import ResponseEvents
from .lease import STOPPED, Leases
from .object import usage_body
from .store import ResponseStore, StoreUnavailable

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, Any]], Any]


class ResponseRun:
    def __init__(self, generation: Generation | None, builder: ResponseEvents,
                 store: ResponseStore | None, *, log: EventLog | None, input_tokens: int,
                 spawn: Spawn, parse_calls: bool = False, leases: Leases | None = None):
        """``store=None``: not stored (store=false); ``log``: the event log, if the response
        keeps one. ``spawn`` runs a coroutine as its own task; ``leases``: this replica's, for a
        stored run. ``generation`` is None only for a run that makes its generations as it goes
        (tool_loop.py)."""
        self.generation = generation
        self.builder = builder
        self.store = store
        self.log = log if store is not None else None
        self.input_tokens = input_tokens
        self.output = ToolOutput(parse=parse_calls)      # text and tool calls (gateway/tools)
        self._spawn = spawn
        self.leases = leases if store is not None else None
        self._started = False
        self._ended = False                     # events() has run to its end (or was stopped)
        self.error: APIError | None = None      # why the response failed, if it did

    @property
    def response_id(self) -> str:
        return self.builder.response["id"]

    @property
    def response(self) -> dict[str, Any]:
        return self.builder.response

    async def start(self) -> None:
        self._started = True
        await self.generation.start()

    async def create_record(self, items: list[dict[str, Any]], project: str) -> None:
        """Store the response as ``project``'s (the caller's API key's)."""
        if self.store is not None:
            owner = self.leases.owner if self.leases is not None else None
            await self.store.create(self.response, items, project, lease=owner)
            if self.leases is not None:
                self.leases.hold(self.response_id)

    async def discard_record(self) -> None:
        """Drop the record of a run that failed before its first token (best effort)."""
        if self.store is not None:
            try:
                await self.store.delete(self.response_id)
            except APIError as err:
                log.warning("response %s: could not drop its record: %s", self.response_id,
                            err.message)
            self._release()

    async def events(self, *, to_client: bool) -> AsyncIterator[dict[str, Any]]:
        """Every event of the response; ``to_client``: a failed final save becomes ``failed``."""
        stopped = False     # from outside: ``_cancelled`` flushes and closes the log
        try:
            yield await self._emit(self.builder.created())
            yield await self._emit(self.builder.in_progress())
            self._check_log()
            if self.response.get("background") and self.store is not None:
                await self.store.update(self.response)
            async for event in self._generate():
                yield event
            closing = await self._end(to_client, *self._outcome())
        except APIError as err:
            log.warning("response %s failed: %s", self.response_id, err.message)
            self.error = err
            closing = await self._end(to_client, "failed", error=err.message)
        except Exception:
            log.exception("response %s: unexpected failure", self.response_id)
            self.error = APIError.internal()
            closing = await self._end(to_client, "failed", error=self.error.message)
        except (asyncio.CancelledError, GeneratorExit):
            stopped = True
            self._spawn(self._cancelled())
            raise
        finally:
            self._ended = True
            await self.close_generation()
            if not stopped:
                self._release()
                if self.log is not None:
                    await self.log.close()
        for event in closing:
            yield event

    async def abandon(self) -> None:
        """Stop the run if ``events()`` never ran to its end (its consumer went away before or
        while iterating): close the Generation and record ``cancelled``. Idempotent."""
        if not self._ended:
            self._ended = True
            await self.close_generation()
            self._spawn(self._cancelled())

    async def close_generation(self) -> None:
        """Close the current Generation (aborting it on the workers if it still runs)."""
        if self.generation is not None:
            await self.generation.aclose()

    def usage(self) -> dict[str, Any]:
        """The response's usage so far."""
        return usage_body(self.generation.usage, self.input_tokens)

    async def _generate(self) -> AsyncIterator[dict[str, Any]]:
        if not self._started:
            await self.start()
        async for event in self._turn_events():
            yield event

    async def _turn_events(self) -> AsyncIterator[dict[str, Any]]:
        """The events of the current Generation's output (text, and calls if parsed)."""
        for event in self.builder.message_started():
            yield await self._emit(event)
        async for chunk in self.generation:
            self._check_log()
            for event in self._item_events(self.output.feed(chunk.text)):
                yield await self._emit(event)
        for event in self._item_events(self.output.finish()):
            yield await self._emit(event)
        self._check_log()

    def _item_events(self, parsed: list) -> list[dict[str, Any]]:
        """The builder's events for the parser's (text, calls opened, argument pieces, calls closed)."""
        events: list[dict[str, Any]] = []
        for e in parsed:
            if isinstance(e, TextDelta):
                events += self.builder.delta(e.text)
            elif isinstance(e, CallOpened):
                events += self.builder.call_added(self.output.calls[e.index].id, e.name)
            elif isinstance(e, ArgumentsDelta):
                events += self.builder.call_arguments(e.index, e.text)
            elif isinstance(e, CallClosed):
                events += self.builder.call_done(e.index)
        return events

    def _outcome(self) -> tuple[str, ...]:
        if self.generation.finish_reason == "length":
            return ("incomplete", "max_output_tokens")
        if self.generation.finish_reason == "grammar":   # the output grammar admitted no next token
            return ("incomplete", "grammar")
        return ("completed",)

    async def _end(self, to_client: bool, status: str, reason: str | None = None, *,
                   error: str | None = None) -> list[dict[str, Any]]:
        """Finish the response, log its closing events, save it; return the closing events."""
        usage = self.usage()
        self.builder.finish(status, usage, error=error, incomplete_reason=reason)
        closing = self.builder.closing()
        try:
            for event in closing:
                await self._emit(event)
            if self.log is not None:
                await self.log.flush()
            await self._save()
        except APIError as err:
            if not to_client:
                raise
            log.error("response %s could not be stored: %s", self.response_id, err.message)
            if status != "failed":       # tell the client: it must not take this for a success
                self.builder.retract(closing)
                self.builder.finish("failed", usage, error=f"The response could not be stored: "
                                                           f"{err.message}")
                closing = self.builder.closing()
        return closing

    async def _cancelled(self) -> None:
        """Record a run stopped from outside as ``cancelled`` (runs as its own task), or as
        ``failed`` if its replica is stopping: what it logged (and a ``response.failed``) goes to
        Redis first (bounded by the socket timeouts), then the record."""
        usage = self.usage()
        if self.leases is not None and self.leases.stopping:
            self.builder.finish("failed", usage, error=STOPPED)
        else:
            self.builder.finish("cancelled", usage)
        try:
            if self.log is not None:
                for event in self.builder.closing():
                    self.log.append(event)
                with contextlib.suppress(APIError):
                    await self.log.flush()
                await self.log.close()
            await self._save()
        except APIError as err:
            log.error("response %s: could not record its cancellation: %s", self.response_id,
                      err.message)

    async def _emit(self, event: dict[str, Any]) -> dict[str, Any]:
        """Queue ``event`` on the log (waiting only while the log is ``max_unflushed`` behind).
        If the log fails, the event still goes out (no gap in the sequence) and the run fails
        right after it (``_check_log``)."""
        if self.log is not None:
            self.log.append(event)
            with contextlib.suppress(StoreUnavailable):
                await self.log.room()
        return event

    def _check_log(self) -> None:
        if self.log is not None and self.log.error is not None:
            raise self.log.error

    async def _save(self) -> None:
        try:
            if self.store is not None and not await self.store.update(self.response):
                log.info("response %s was deleted or ended elsewhere while it ran; not saved",
                         self.response_id)
        finally:
            self._release()

    def _release(self) -> None:
        if self.leases is not None:
            self.leases.release(self.response_id)

"""Background responses: runs that outlive their HTTP request, and the cancels that stop them.

``ResponseTasks`` (one per app) holds a strong reference to every task it starts until the task
ends: each background run, the cancel listener, and the detached saves of ``ResponseRun``.

Cancelling: ``POST /v1/responses/{id}/cancel`` may reach any replica. It sets the store's cancel
flag and publishes the id (``ResponseStore.request_cancel``). While this replica runs background
responses, one listener task is subscribed to those messages and cancels the matching run's task,
which closes its Generation (aborting the request on the workers, freeing its KV) and records
``cancelled``. After each (re)subscription the listener checks the flags of the runs it has, so a
cancel published while it was not listening (Redis restarting) is still seen. On the replica that
runs it, the cancel endpoint cancels the task at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Coroutine

from ..errors import APIError
from .run import ResponseRun
from .store import ResponseStore

log = logging.getLogger(__name__)

RESUBSCRIBE_S = 0.5
SHUTDOWN_S = 5.0        # a stopping replica's wait for its runs to record their end


class ResponseTasks:
    def __init__(self, store: ResponseStore):
        self.store = store
        self._tasks: set[asyncio.Task] = set()
        self._runs: dict[str, asyncio.Task] = {}
        self._listener: asyncio.Task | None = None

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """Run ``coro`` as its own task, referenced until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def start(self, run: ResponseRun) -> None:
        """Run ``run`` to its end in this process, whatever happens to the request that made it."""
        task = self.spawn(self._background(run))
        self._runs[run.response_id] = task
        task.add_done_callback(lambda done: self._ended(done, run))
        if self._listener is None or self._listener.done():
            self._listener = self.spawn(self._listen())

    def _ended(self, task: asyncio.Task, run: ResponseRun) -> None:
        self._runs.pop(run.response_id, None)
        if task.cancelled():    # before it ever ran: nothing else closes the run, records the cancel
            self.spawn(run.abandon())

    @property
    def running(self) -> tuple[int, int]:
        """Background runs of this replica, and tasks of any kind it still references."""
        return len(self._runs), len(self._tasks)

    async def shutdown(self) -> None:
        """Cancel every local run and wait (up to ``SHUTDOWN_S``) for all tasks to end, so that
        each run records its end (``failed``: its replica is stopping)."""
        for task in list(self._runs.values()):
            task.cancel()
        deadline = asyncio.get_running_loop().time() + SHUTDOWN_S
        while self._tasks and (left := deadline - asyncio.get_running_loop().time()) > 0:
            await asyncio.wait(set(self._tasks), timeout=left)

    def cancel_local(self, response_id: str) -> bool:
        """Cancel the run if this process runs it; False if it does not."""
        task = self._runs.get(response_id)
        if task is None:
            return False
        task.cancel()
        return True

    async def _background(self, run: ResponseRun) -> None:
        try:
            async for _ in run.events(to_client=False):
                pass
        except asyncio.CancelledError:
            log.info("background response %s cancelled", run.response_id)
        except APIError as err:
            log.error("background response %s could not be stored: %s", run.response_id,
                      err.message)

    async def _listen(self) -> None:
        """Cancel local runs named on the cancel channel; ends when no run is left."""
        while self._runs:
            try:
                async with self.store.cancels() as cancels:
                    await self._cancel_flagged()
                    async for response_id in cancels:
                        if response_id:
                            self.cancel_local(response_id)
                        if not self._runs:
                            return
            except APIError as err:      # the store is unreachable for now: listen again soon
                log.warning("cancel listener: %s", err.message)
                await asyncio.sleep(RESUBSCRIBE_S)

    async def _cancel_flagged(self) -> None:
        for response_id in list(self._runs):
            if await self.store.cancel_requested(response_id):
                self.cancel_local(response_id)

"""Background responses: runs that outlive their HTTP request, and the tasks that watch them.

``ResponseTasks`` (one per app) holds a strong reference to every task it starts until the task
ends: each background run, the watcher beside it, and the detached saves of ``ResponseRun``.

Cancelling: ``POST /v1/responses/{id}/cancel`` may reach any replica. It sets the store's cancel
flag; the replica running the response polls that flag every ``poll_s`` seconds and cancels the
run's task, which closes its Generation (aborting the request on the workers, freeing its KV) and
records ``cancelled``. On the replica that runs it, the task is cancelled at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Coroutine

from .errors import APIError
from .responses_records import ResponseRecords
from .responses_run import ResponseRun

log = logging.getLogger(__name__)


class ResponseTasks:
    def __init__(self, records: ResponseRecords, poll_s: float = 0.2):
        self.records = records
        self.poll_s = poll_s
        self._tasks: set[asyncio.Task] = set()
        self._runs: dict[str, asyncio.Task] = {}

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

    def _ended(self, task: asyncio.Task, run: ResponseRun) -> None:
        self._runs.pop(run.response_id, None)
        if task.cancelled():    # before it ever ran: nothing else closes the run, records the cancel
            self.spawn(run.abandon())

    def cancel_local(self, response_id: str) -> bool:
        """Cancel the run if this process runs it; False if it does not."""
        task = self._runs.get(response_id)
        if task is None:
            return False
        task.cancel()
        return True

    async def _background(self, run: ResponseRun) -> None:
        watcher = self.spawn(self._watch(run.response_id, asyncio.current_task()))
        try:
            async for _ in run.events(to_client=False):
                pass
        except asyncio.CancelledError:
            log.info("background response %s cancelled", run.response_id)
        except APIError as err:
            log.error("background response %s could not be stored: %s", run.response_id,
                      err.message)
        finally:
            watcher.cancel()

    async def _watch(self, response_id: str, task: asyncio.Task) -> None:
        """Cancel ``task`` once a cancel of ``response_id`` is requested (on any replica)."""
        while not task.done():
            await asyncio.sleep(self.poll_s)
            try:
                if await self.records.cancel_requested(response_id):
                    task.cancel()
                    return
            except APIError:    # the store is unreachable for now: keep watching
                continue

"""What the Responses endpoints share, one per app: the store, the background tasks, the leases."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from .background import ResponseTasks
from .lease import Leases
from .store import ResponseStore


@dataclass(frozen=True)
class ResponsesState:
    store: ResponseStore
    tasks: ResponseTasks
    leases: Leases
    event_log_batch: int = 32    # EventLog.max_unflushed (TANDEM_EVENT_LOG_BATCH)

    @classmethod
    def create(cls, store: ResponseStore, event_log_batch: int = 32) -> "ResponsesState":
        return cls(store, ResponseTasks(store), Leases(store), event_log_batch)

    def stopping(self) -> None:
        """The replica got a stop signal: runs that end from now on record ``failed``."""
        self.leases.stopping = True

    async def stop(self) -> None:
        """The replica is shutting down: end the runs it still has (``failed``, lease.py)."""
        self.stopping()
        await self.tasks.shutdown()


def responses_state(request: Request) -> ResponsesState:
    """FastAPI dependency: the app's ``ResponsesState`` (set once by ``create_app``)."""
    return request.app.state.responses

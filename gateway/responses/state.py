"""What the Responses endpoints share, one per app: the store and the background tasks."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from .background import ResponseTasks
from .store import ResponseStore


@dataclass(frozen=True)
class ResponsesState:
    store: ResponseStore
    tasks: ResponseTasks
    event_log_batch: int = 32    # EventLog.max_unflushed (TANDEM_EVENT_LOG_BATCH)

    @classmethod
    def create(cls, store: ResponseStore, event_log_batch: int = 32) -> "ResponsesState":
        return cls(store, ResponseTasks(store), event_log_batch)


def responses_state(request: Request) -> ResponsesState:
    """FastAPI dependency: the app's ``ResponsesState`` (set once by ``create_app``)."""
    return request.app.state.responses

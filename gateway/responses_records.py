"""Stored responses as the HTTP layer sees them: ``ResponseStore`` calls made safe for the event loop.

``ResponseStore`` (response_store.py) is synchronous redis-py; every call here runs in a worker
thread so the event loop never waits on Redis. Failures have one meaning each:
- the store is unreachable (or this gateway has none) → ``APIError`` 503 ``store_unavailable``;
  never a 404 for a response that may exist, never a success that stored nothing;
- a missing, expired or deleted response → 404 naming the id (``response_id`` or
  ``previous_response_id``, whichever the client gave);
- an id that cannot be a response id (no ``resp`` prefix) → 400.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .errors import APIError
from .response_store import ResponseStore, StoreUnavailable

log = logging.getLogger(__name__)


class ResponseRecords:
    """Async access to the response store; ``store=None`` means this gateway has none."""

    def __init__(self, store: ResponseStore | None):
        self.store = store

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.store is None:
            raise APIError.store_unavailable("this gateway has no response store configured")
        try:
            return await asyncio.to_thread(getattr(self.store, method), *args, **kwargs)
        except StoreUnavailable as exc:
            log.warning("response store: %s failed: %s", method, exc)
            raise APIError.store_unavailable(str(exc)) from None

    # -- records ------------------------------------------------------------------------------------
    async def create(self, response: dict[str, Any], items: list[dict[str, Any]]) -> None:
        await self._call("create", response, items)

    async def update(self, response: dict[str, Any]) -> bool:
        """Replace the record (its TTL kept); False if it is gone (deleted or expired meanwhile)."""
        try:
            await self._call("update", response)
            return True
        except KeyError:
            return False

    async def get(self, response_id: str, param: str = "response_id") -> dict[str, Any]:
        check_id(response_id, param)
        response = await self._call("get", response_id)
        if response is None:
            raise not_found(response_id, param)
        return response

    async def input_items(self, response_id: str, param: str = "response_id"
                          ) -> list[dict[str, Any]]:
        items = await self._call("input_items", response_id)
        if items is None:
            raise not_found(response_id, param)
        return items

    async def delete(self, response_id: str) -> None:
        check_id(response_id, "response_id")
        if not await self._call("delete", response_id):
            raise not_found(response_id, "response_id")

    # -- event log and cancellation -----------------------------------------------------------------
    async def append_event(self, response_id: str, event: dict[str, Any]) -> None:
        await self._call("append_event", response_id, event)

    async def has_events(self, response_id: str) -> bool:
        return await self._call("has_events", response_id)

    async def events_after(self, response_id: str, after: int) -> list[dict[str, Any]]:
        return await self._call("events_after", response_id, after)

    async def request_cancel(self, response_id: str) -> None:
        await self._call("request_cancel", response_id)

    async def cancel_requested(self, response_id: str) -> bool:
        return await self._call("cancel_requested", response_id)


def check_id(response_id: str, param: str) -> None:
    if not response_id.startswith("resp"):
        raise APIError.invalid(f"Invalid '{param}': '{response_id}'. Expected an ID that begins "
                               "with 'resp'.", param)


def not_found(response_id: str, param: str) -> APIError:
    return APIError(404, f"Response with id '{response_id}' not found.", param=param,
                    code="response_not_found")

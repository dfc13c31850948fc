"""The streaming events of one response, in the exact order of the reference (§2.3).

```
created → in_progress → output_item.added → content_part.added → output_text.delta × n
        → output_text.done → content_part.done → output_item.done → completed | incomplete | failed
```
Every event carries ``sequence_number`` (0, 1, 2, ... per response): it is the cursor of
``GET /v1/responses/{id}?stream=true&starting_after=N``. A response that fails before its message
starts skips the item events; one that fails after closes its message (status ``incomplete``) and
then ends with ``response.failed``. A cancelled background response has no terminal event (the SDK
knows none): its stored record says ``cancelled``. No payload ever has a top-level ``error`` key
(the SDK would raise on it mid-stream).

Wire format (``as_sse``): ``event: <type>`` and ``data: <compact JSON>`` lines and a blank line;
no ``[DONE]``.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

from ..sse import Event, data_event
from . import object as objects

TERMINAL = {"completed": "response.completed", "incomplete": "response.incomplete",
            "failed": "response.failed"}
TERMINAL_TYPES = frozenset(TERMINAL.values())


async def as_sse(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[Event]:
    """Events as server-sent events; closing this closes ``events`` (and so its run)."""
    try:
        async for event in events:
            yield data_event(event, event["type"])
    finally:
        await events.aclose()


class ResponseEvents:
    """Builds one response's events; owns its sequence numbers, its text and the Response so far."""

    def __init__(self, response: dict[str, Any], item_id: str):
        self.response = response
        self.item_id = item_id
        self.text = ""
        self.started = False      # the message item has been added
        self._seq = 0

    # -- lifecycle ----------------------------------------------------------------------------------
    def created(self) -> dict[str, Any]:
        return self._lifecycle("response.created")

    def in_progress(self) -> dict[str, Any]:
        self.response = {**self.response, "status": "in_progress"}
        return self._lifecycle("response.in_progress")

    def finish(self, status: str, usage: dict[str, Any] | None, *, error: str | None = None,
               incomplete_reason: str | None = None) -> dict[str, Any]:
        """The final Response for ``status`` (the message closed if it started); no events yet."""
        item_status = "completed" if status == "completed" else "incomplete"
        output = [objects.message_item(self.item_id, self.text, item_status)] if self.started else []
        self.response = objects.finish(self.response, status, output=output, usage=usage,
                                       error=error, incomplete_reason=incomplete_reason)
        return self.response

    def closing(self) -> list[dict[str, Any]]:
        """After ``finish``: the message's done events and the terminal event (none if cancelled)."""
        status = self.response["status"]
        if status not in TERMINAL:
            return []
        closing = self._message_done(self.response["output"][0]) if self.started else []
        return [*closing, self._lifecycle(TERMINAL[status])]

    def retract(self, events: list[dict[str, Any]]) -> None:
        """Take back the last ``events``, never sent, so that the sequence stays gapless."""
        assert [e["sequence_number"] for e in events] == list(range(self._seq - len(events), self._seq))
        self._seq -= len(events)

    # -- the message --------------------------------------------------------------------------------
    def message_started(self) -> list[dict[str, Any]]:
        self.started = True
        return [
            self._event("response.output_item.added", output_index=0,
                        item=objects.message_item(self.item_id, None, "in_progress")),
            self._event("response.content_part.added", **self._where(),
                        part=objects.output_part("")),
        ]

    def delta(self, text: str) -> dict[str, Any]:
        self.text += text
        return self._event("response.output_text.delta", **self._where(), delta=text, logprobs=[])

    def _message_done(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        part = item["content"][0]
        return [
            self._event("response.output_text.done", **self._where(), text=self.text, logprobs=[]),
            self._event("response.content_part.done", **self._where(), part=part),
            self._event("response.output_item.done", output_index=0, item=item),
        ]

    # -- helpers ------------------------------------------------------------------------------------
    def _where(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "output_index": 0, "content_index": 0}

    def _lifecycle(self, kind: str) -> dict[str, Any]:
        return self._event(kind, response=self.response)

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

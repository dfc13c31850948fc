"""The streaming events of one response, in the exact order of the reference (§2.3, §2.4).

```
created → in_progress → [message: output_item.added → content_part.added → output_text.delta × n
        → output_text.done → content_part.done → output_item.done]
        → [each call: output_item.added → function_call_arguments.delta × n
        → function_call_arguments.done → output_item.done] → completed | incomplete | failed
```
Items take output indices in the order they start: text the model writes before its calls is the
message at index 0, and a message is closed before the first call is added. Without tools the
message is added before the first token (as before); with tools it is added at the first text.
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
    """Builds one response's events; owns its sequence numbers, its output items and the Response."""

    def __init__(self, response: dict[str, Any], item_id: str, *, lazy_message: bool = False):
        """``lazy_message``: add the message at its first text (tools), not before any token."""
        self.response = response
        self.item_id = item_id
        self.lazy_message = lazy_message
        self.text = ""
        self.started = False      # the message item has been added
        self.items: list[dict[str, Any]] = []     # output items in index order, as they stand
        self.done: set[int] = set()               # indices whose done events were sent
        self._seq = 0

    # -- lifecycle ----------------------------------------------------------------------------------
    def created(self) -> dict[str, Any]:
        return self._lifecycle("response.created")

    def in_progress(self) -> dict[str, Any]:
        self.response = {**self.response, "status": "in_progress"}
        return self._lifecycle("response.in_progress")

    def finish(self, status: str, usage: dict[str, Any] | None, *, error: str | None = None,
               incomplete_reason: str | None = None) -> dict[str, Any]:
        """The final Response for ``status`` (open items closed); no events yet."""
        final = "completed" if status == "completed" else "incomplete"
        for i, item in enumerate(self.items):
            if i not in self.done:
                self.items[i] = self._final_item(item, final)
        self.response = objects.finish(self.response, status, output=list(self.items), usage=usage,
                                       error=error, incomplete_reason=incomplete_reason)
        return self.response

    def closing(self) -> list[dict[str, Any]]:
        """After ``finish``: done events of items still open, then the terminal event (none if
        cancelled)."""
        status = self.response["status"]
        if status not in TERMINAL:
            return []
        closing = [e for i in range(len(self.items)) if i not in self.done for e in self._item_done(i)]
        return [*closing, self._lifecycle(TERMINAL[status])]

    def retract(self, events: list[dict[str, Any]]) -> None:
        """Take back the last ``events``, never sent, so that the sequence stays gapless."""
        assert [e["sequence_number"] for e in events] == list(range(self._seq - len(events), self._seq))
        self._seq -= len(events)
        self.done -= {e["output_index"] for e in events if e["type"] == "response.output_item.done"}

    # -- the message --------------------------------------------------------------------------------
    def message_started(self) -> list[dict[str, Any]]:
        if self.lazy_message:
            return []
        return self._start_message()

    def _start_message(self) -> list[dict[str, Any]]:
        self.started = True
        self.message_index = len(self.items)
        self.items.append(objects.message_item(self.item_id, None, "in_progress"))
        return [
            self._event("response.output_item.added", output_index=self.message_index, item=self.items[-1]),
            self._event("response.content_part.added", **self._where(), part=objects.output_part("")),
        ]

    def delta(self, text: str) -> list[dict[str, Any]]:
        opened = [] if self.started else self._start_message()
        self.text += text
        return [*opened, self._event("response.output_text.delta", **self._where(), delta=text, logprobs=[])]

    # -- function calls -----------------------------------------------------------------------------
    def call_added(self, call_id: str, name: str) -> list[dict[str, Any]]:
        """A new call item (the message, if open, is closed first: it keeps the lower index)."""
        closing = self._item_done(self.message_index) if self.started and self.message_index not in self.done \
            else []
        item = objects.function_call_item(objects.new_id("fc"), call_id, name, "", "in_progress")
        self.items.append(item)
        return [*closing, self._event("response.output_item.added", output_index=len(self.items) - 1, item=item)]

    def call_arguments(self, call_index: int, text: str) -> dict[str, Any]:
        index = self._call_index(call_index)
        item = self.items[index]
        self.items[index] = {**item, "arguments": item["arguments"] + text}
        return self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                           delta=text)

    def call_done(self, call_index: int) -> list[dict[str, Any]]:
        index = self._call_index(call_index)
        self.items[index] = self._final_item(self.items[index], "completed")
        return self._item_done(index)

    def _call_index(self, call_index: int) -> int:
        """Output index of the ``call_index``-th call."""
        return [i for i, item in enumerate(self.items) if item["type"] == "function_call"][call_index]

    # -- items --------------------------------------------------------------------------------------
    def _final_item(self, item: dict[str, Any], status: str) -> dict[str, Any]:
        if item["type"] == "message":
            return objects.message_item(self.item_id, self.text, status)
        return {**item, "status": status}

    def _item_done(self, index: int) -> list[dict[str, Any]]:
        self.done.add(index)
        item = self.items[index]
        if item["type"] == "function_call":
            return [self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                arguments=item["arguments"]),
                    self._event("response.output_item.done", output_index=index, item=item)]
        item = self.items[index] = self._final_item(item, item["status"] if item["status"] != "in_progress"
                                                    else "completed")
        return [
            self._event("response.output_text.done", **self._where(), text=self.text, logprobs=[]),
            self._event("response.content_part.done", **self._where(), part=item["content"][0]),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    # -- helpers ------------------------------------------------------------------------------------
    def _where(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "output_index": self.message_index, "content_index": 0}

    def _lifecycle(self, kind: str) -> dict[str, Any]:
        return self._event(kind, response=self.response)

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

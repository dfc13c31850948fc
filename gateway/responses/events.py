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

A response with remote MCP tools (tool_loop.py) runs several model turns through one builder, so
sequence numbers and output indices run on across turns (``next_turn``; each turn may write its own
message). Its items, per reference §3:
```
listing:  output_item.added(mcp_list_tools) → mcp_list_tools.in_progress → .completed | .failed
          → output_item.done
a call:   output_item.added(mcp_call) → mcp_call_arguments.delta × n → mcp_call_arguments.done
          → mcp_call.in_progress → mcp_call.completed | .failed → output_item.done
approval: output_item.added(mcp_approval_request) → output_item.done (arguments complete)
```
A call of a tool in ``mcp_tools`` becomes an ``mcp_call`` (or, when it needs approval, an
``mcp_approval_request``) instead of a ``function_call``.
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
ARGUMENTS = {"function_call": "response.function_call_arguments", "mcp_call": "response.mcp_call_arguments"}


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
        self.item_id = item_id                    # the id of this turn's message
        self.lazy_message = lazy_message
        self.started = False      # this turn's message has been added
        self.message_index = -1   # its output index, once added
        self.texts: dict[int, str] = {}           # each message's text, by output index
        self.items: list[dict[str, Any]] = []     # output items in index order, as they stand
        self.done: set[int] = set()               # indices whose done events were sent
        self.turn_calls: list[int] = []           # output indices of this turn's calls, in order
        self.mcp_tools: dict[str, tuple[str, bool]] = {}   # tool name → (server_label, needs approval)
        self._seq = 0

    @property
    def text(self) -> str:
        """This turn's message text so far."""
        return self.texts.get(self.message_index, "")

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
        for i in range(len(self.items)):
            if i not in self.done:
                self.items[i] = self._final_item(i, final)
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

    def next_turn(self, item_id: str) -> list[dict[str, Any]]:
        """Start the next model turn (its message will be ``item_id``); closes this turn's message."""
        closing = self._close_message()
        self.item_id, self.started, self.message_index, self.turn_calls = item_id, False, -1, []
        return closing

    # -- the message --------------------------------------------------------------------------------
    def message_started(self) -> list[dict[str, Any]]:
        if self.lazy_message:
            return []
        return self._start_message()

    def _start_message(self) -> list[dict[str, Any]]:
        self.started = True
        self.message_index = len(self.items)
        self.texts[self.message_index] = ""
        self.items.append(objects.message_item(self.item_id, None, "in_progress"))
        return [
            self._event("response.output_item.added", output_index=self.message_index, item=self.items[-1]),
            self._event("response.content_part.added", **self._where(self.message_index),
                        part=objects.output_part("")),
        ]

    def delta(self, text: str) -> list[dict[str, Any]]:
        opened = [] if self.started else self._start_message()
        self.texts[self.message_index] += text
        return [*opened, self._event("response.output_text.delta", **self._where(self.message_index),
                                     delta=text, logprobs=[])]

    def _close_message(self) -> list[dict[str, Any]]:
        if self.started and self.message_index not in self.done:
            return self._item_done(self.message_index)
        return []

    # -- calls the model makes ----------------------------------------------------------------------
    def call_added(self, call_id: str, name: str) -> list[dict[str, Any]]:
        """A new call item (the message, if open, is closed first: it keeps the lower index): a
        ``function_call``, or for an MCP tool an ``mcp_call`` / ``mcp_approval_request``."""
        closing = self._close_message()
        if name not in self.mcp_tools:
            item = objects.function_call_item(objects.new_id("fc"), call_id, name, "", "in_progress")
        else:
            label, approval = self.mcp_tools[name]
            item = objects.mcp_approval_request(label, name, "") if approval \
                else objects.mcp_call_item(label, name, "")
        self.items.append(item)
        self.turn_calls.append(len(self.items) - 1)
        return [*closing, self._event("response.output_item.added", output_index=len(self.items) - 1, item=item)]

    def call_arguments(self, call_index: int, text: str) -> list[dict[str, Any]]:
        index = self.turn_calls[call_index]
        item = self.items[index] = {**self.items[index], "arguments": self.items[index]["arguments"] + text}
        kind = ARGUMENTS.get(item["type"])
        return [self._event(f"{kind}.delta", item_id=item["id"], output_index=index, delta=text)] if kind else []

    def call_done(self, call_index: int) -> list[dict[str, Any]]:
        """The model finished writing the call; an ``mcp_call`` stays open until it has run."""
        index = self.turn_calls[call_index]
        if self.items[index]["type"] == "mcp_call":
            item = self.items[index]
            return [self._event("response.mcp_call_arguments.done", item_id=item["id"], output_index=index,
                                arguments=item["arguments"])]
        self.items[index] = self._final_item(index, "completed")
        return self._item_done(index)

    # -- MCP work the gateway does --------------------------------------------------------------------
    def listing_started(self, label: str) -> tuple[int, list[dict[str, Any]]]:
        """An ``mcp_list_tools`` item for server ``label``: its index and first events."""
        item = {"type": "mcp_list_tools", "id": objects.new_id("mcpl"), "server_label": label, "tools": []}
        return self._mcp_item_started(item, "response.mcp_list_tools.in_progress")

    def listing_done(self, index: int, tools: list[dict[str, Any]], error: str | None) -> list[dict[str, Any]]:
        self.items[index] = {**self.items[index], "tools": tools, **({"error": error} if error else {})}
        return self._mcp_item_done(index, "response.mcp_list_tools", failed=error is not None)

    def approved_call(self, label: str, name: str, arguments: str, approval_request_id: str
                      ) -> tuple[int, list[dict[str, Any]]]:
        """An ``mcp_call`` the user approved: added with its arguments, then running."""
        item = objects.mcp_call_item(label, name, "", approval_request_id)
        index, events = self._mcp_item_started(item)
        self.turn_calls.append(index)
        call = len(self.turn_calls) - 1
        return index, [*events, *self.call_arguments(call, arguments), *self.call_done(call),
                       *self.call_running(index)]

    def call_running(self, index: int) -> list[dict[str, Any]]:
        return [self._event("response.mcp_call.in_progress", item_id=self.items[index]["id"], output_index=index)]

    def call_result(self, index: int, output: str | None, error: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The ``mcp_call`` at ``index`` has run: ``output``, or ``error`` (status ``failed``)."""
        self.items[index] = {**self.items[index], "output": output, "error": error,
                             "status": "failed" if error else "completed"}
        return self._mcp_item_done(index, "response.mcp_call", failed=error is not None)

    def _mcp_item_started(self, item: dict[str, Any], progress: str | None = None
                          ) -> tuple[int, list[dict[str, Any]]]:
        closing = self._close_message()
        self.items.append(item)
        index = len(self.items) - 1
        events = [*closing, self._event("response.output_item.added", output_index=index, item=item)]
        if progress:
            events.append(self._event(progress, item_id=item["id"], output_index=index))
        return index, events

    def _mcp_item_done(self, index: int, kind: str, *, failed: bool) -> list[dict[str, Any]]:
        outcome = self._event(f"{kind}.{'failed' if failed else 'completed'}", item_id=self.items[index]["id"],
                              output_index=index)
        return [outcome, *self._item_done(index)]

    # -- items --------------------------------------------------------------------------------------
    def _final_item(self, index: int, status: str) -> dict[str, Any]:
        item = self.items[index]
        if item["type"] == "message":
            return objects.message_item(item["id"], self.texts[index], status)
        return {**item, "status": status} if "status" in item else item

    def _item_done(self, index: int) -> list[dict[str, Any]]:
        self.done.add(index)
        item = self.items[index]
        if item["type"] == "function_call":
            return [self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                arguments=item["arguments"]),
                    self._event("response.output_item.done", output_index=index, item=item)]
        if item["type"] != "message":
            return [self._event("response.output_item.done", output_index=index, item=item)]
        item = self.items[index] = self._final_item(index, item["status"] if item["status"] != "in_progress"
                                                    else "completed")
        return [
            self._event("response.output_text.done", **self._where(index), text=self.texts[index], logprobs=[]),
            self._event("response.content_part.done", **self._where(index), part=item["content"][0]),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    # -- helpers ------------------------------------------------------------------------------------
    def _where(self, index: int) -> dict[str, Any]:
        return {"item_id": self.items[index]["id"], "output_index": index, "content_index": 0}

    def _lifecycle(self, kind: str) -> dict[str, Any]:
        return self._event(kind, response=self.response)

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

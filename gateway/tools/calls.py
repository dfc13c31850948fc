"""One generation's output read as text and tool calls: the parser's events plus what they add up
to (the content and each call with its id), for both APIs.

Without tools (or with ``tool_choice: none``, where the grammar forbids the tag) every delta is
plain text and nothing is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass

from .definitions import call_id
from .parser import ArgumentsDelta, CallClosed, CallOpened, Event, TextDelta, ToolCallParser


@dataclass
class ParsedCall:
    index: int
    id: str
    name: str
    arguments: str = ""
    done: bool = False


class ToolOutput:
    def __init__(self, parse: bool):
        self._parser = ToolCallParser() if parse else None
        self.content = ""
        self.calls: list[ParsedCall] = []

    def feed(self, text: str) -> list[Event]:
        events = self._parser.feed(text) if self._parser else ([TextDelta(text)] if text else [])
        self._apply(events)
        return events

    def finish(self) -> list[Event]:
        events = self._parser.finish() if self._parser else []
        self._apply(events)
        return events

    def _apply(self, events: list[Event]) -> None:
        for e in events:
            if isinstance(e, TextDelta):
                self.content += e.text
            elif isinstance(e, CallOpened):
                self.calls.append(ParsedCall(e.index, call_id(), e.name))
            elif isinstance(e, ArgumentsDelta):
                self.calls[e.index].arguments += e.text
            elif isinstance(e, CallClosed):
                self.calls[e.index].done = True

    @property
    def called(self) -> bool:
        return bool(self.calls)

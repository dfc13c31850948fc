"""The incremental parser that turns the model's tagged output into text and tool calls, for both
APIs.

The model writes free text, then at most one ``<tool_call>[{"name": ..., "arguments": {...}},
...]</tool_call>`` (services/engine/grammar.py forces the shape). ``feed`` takes each text delta as it
arrives and returns events built from the parser's state — never by re-parsing the text so far:

- ``TextDelta``: text outside the tag (text that may be the start of the tag is held back until
  it is known not to be; the tag itself never reaches the content);
- ``CallOpened(index, name)``: a call's whole name, once its string has closed, before any of its
  arguments;
- ``ArgumentsDelta(index, text)``: a piece of the call's ``arguments`` JSON, exactly as written;
- ``CallClosed(index, arguments)``: the call's object has closed; ``arguments`` is the whole JSON.

``finish`` flushes held-back text and reports calls left open (the output was cut short).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from services.engine.grammar import TOOL_CALL_CLOSE, TOOL_CALL_OPEN


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class CallOpened:
    index: int
    name: str


@dataclass(frozen=True)
class ArgumentsDelta:
    index: int
    text: str


@dataclass(frozen=True)
class CallClosed:
    index: int
    arguments: str


Event = TextDelta | CallOpened | ArgumentsDelta | CallClosed


@dataclass
class _Call:
    """The element being read: its key/value position and what it captured so far."""

    key: str = ""
    key_raw: str = ""
    in_value: bool = False
    name_raw: str = ""
    name: str | None = None
    arguments: str = ""
    sent: int = 0              # characters of ``arguments`` already emitted


@dataclass
class ToolCallParser:
    state: str = "text"        # text → calls → closing → after
    held: str = ""             # text held back: may be the start of the open tag
    depth: int = 0             # JSON nesting depth inside the tag (1: the array, 2: a call)
    in_string: bool = False
    escaped: bool = False
    index: int = 0             # index of the current call
    call: _Call | None = None
    closing: str = ""          # characters of the close tag read so far

    def feed(self, text: str) -> list[Event]:
        events: list[Event] = []
        if self.state == "text":
            text = self._text(text, events)
        for c in text:
            if self.state == "calls":
                self._json_char(c, events)
            elif self.state == "closing":
                self.closing += c
                if self.closing == TOOL_CALL_CLOSE:
                    self.state = "after"
            else:
                events.append(TextDelta(c))
        self._flush_arguments(events)
        return _merge_text(events)

    def finish(self) -> list[Event]:
        """Held-back text (a partial tag that never completed) as text."""
        events = [TextDelta(self.held)] if self.state == "text" and self.held else []
        self.held = ""
        return events

    def _text(self, text: str, events: list[Event]) -> str:
        """Consume ``text`` in the text state; return what follows the open tag, if it came."""
        buf = self.held + text
        at = buf.find(TOOL_CALL_OPEN)
        if at != -1:
            self.held = ""
            if at:
                events.append(TextDelta(buf[:at]))
            self.state = "calls"
            return buf[at + len(TOOL_CALL_OPEN):]
        keep = next((n for n in range(min(len(TOOL_CALL_OPEN) - 1, len(buf)), 0, -1)
                     if buf.endswith(TOOL_CALL_OPEN[:n])), 0)
        self.held = buf[len(buf) - keep:] if keep else ""
        if len(buf) > keep:
            events.append(TextDelta(buf[:len(buf) - keep]))
        return ""

    def _json_char(self, c: str, events: list[Event]) -> None:
        call = self.call
        member = call is not None and call.in_value and (self.depth > 2 or self.in_string or c not in ",}")
        if member:
            self._capture(call, c)
        elif call is not None and self.depth == 2 and (self.in_string or c == '"'):
            call.key_raw += c                        # a key of the call object
        was_in_string = self.in_string
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif c == "\\":
                self.escaped = True
            elif c == '"':
                self.in_string = False
        elif c == '"':
            self.in_string = True
        elif c in "[{":
            self.depth += 1
            if self.depth == 2:
                self.call = _Call()
        elif c in "]}":
            self.depth -= 1
            if self.depth == 1 and call is not None:
                self._close_call(call, events)
            elif self.depth == 0:
                self.state = "closing"
        elif self.depth == 2 and call is not None:
            self._punctuation(call, c)
        if was_in_string and not self.in_string and member and call.key == "name" and call.name is None:
            call.name = json.loads(call.name_raw)
            events.append(CallOpened(self.index, call.name))

    def _capture(self, call: _Call, c: str) -> None:
        if call.key == "name":
            call.name_raw += c
        elif call.key == "arguments" and (call.arguments or not c.isspace()):
            call.arguments += c

    def _punctuation(self, call: _Call, c: str) -> None:
        if c == ":":
            call.key, call.key_raw, call.in_value = json.loads(call.key_raw or '""'), "", True
        elif c == ",":
            call.in_value = False

    def _close_call(self, call: _Call, events: list[Event]) -> None:
        self._flush_arguments(events)
        events.append(CallClosed(self.index, call.arguments))
        self.index += 1
        self.call = None

    def _flush_arguments(self, events: list[Event]) -> None:
        call = self.call
        if call is not None and call.name is not None and len(call.arguments) > call.sent:
            events.append(ArgumentsDelta(self.index, call.arguments[call.sent:]))
            call.sent = len(call.arguments)


def _merge_text(events: list[Event]) -> list[Event]:
    merged: list[Event] = []
    for e in events:
        if isinstance(e, TextDelta) and merged and isinstance(merged[-1], TextDelta):
            merged[-1] = TextDelta(merged[-1].text + e.text)
        elif not (isinstance(e, TextDelta) and not e.text):
            merged.append(e)
    return merged

"""Server-sent events as OpenAI-compatible servers stream them: ``data:`` lines, one JSON per event.

Per the SSE format, an event is the ``data`` lines up to a blank line (joined by newlines); lines
starting with ``:`` are comments (keep-alive pings) and other fields (``event``, ``id``,
``retry``) are ignored. The stream's last event is ``data: [DONE]``.
"""

from __future__ import annotations

DONE = "[DONE]"


class SSEDecoder:
    """Feed it the body's lines; it returns each event's data when the event is complete."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        """The data of the event that ``line`` completes, else ``None``."""
        line = line.rstrip("\r\n")
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def flush(self) -> str | None:
        """The data of an event left unterminated at the end of the body, if any."""
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        return data

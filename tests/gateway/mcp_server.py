"""A real MCP server for tests: the ``mcp`` SDK's MCPServer over Streamable HTTP on loopback, in
a thread. Tools: ``add`` and ``echo_upper`` work, ``explode`` always fails; ``seen`` records the
calls it ran and ``headers`` the last request's headers."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer


class LoopbackMcpServer:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.headers: dict[str, str] = {}
        server = MCPServer("tandem-test")

        @server.tool(description="Add two integers")
        def add(a: int, b: int) -> int:
            self.seen.append(("add", {"a": a, "b": b}))
            return a + b

        @server.tool(description="Upper-case a word")
        def echo_upper(word: str) -> str:
            self.seen.append(("echo_upper", {"word": word}))
            return word.upper()

        @server.tool(description="Always fails")
        def explode(reason: str) -> str:
            self.seen.append(("explode", {"reason": reason}))
            raise ValueError(f"boom: {reason}")

        self.app = self._recording(server.streamable_http_app())
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self._uvicorn = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                      log_level="warning"))

    def _recording(self, app: Any) -> Any:
        async def asgi(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                self.headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            await app(scope, receive, send)
        return asgi

    def __enter__(self) -> "LoopbackMcpServer":
        threading.Thread(target=self._uvicorn.run, daemon=True).start()
        deadline = time.monotonic() + 10
        while not self._uvicorn.started:
            assert time.monotonic() < deadline, "MCP test server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._uvicorn.should_exit = True

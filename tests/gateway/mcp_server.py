"""A real MCP server for tests: the ``mcp`` SDK's MCPServer on loopback, in a thread, over
Streamable HTTP (``/mcp``) or only the old HTTP+SSE transport (``transport="sse"``, ``/sse``).
Tools: ``add`` and ``echo_upper`` work, ``explode`` always fails, ``slow`` sleeps; ``seen``
records the calls it ran (``slow`` when it starts), ``methods`` the JSON-RPC methods it was sent
and ``headers`` the last request's headers."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer


class LoopbackMcpServer:
    def __init__(self, transport: str = "streamable-http") -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.methods: list[str] = []
        self.finished: list[str] = []
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

        @server.tool(description="Wait some seconds")
        async def slow(seconds: float) -> str:
            self.seen.append(("slow", {"seconds": seconds}))
            await asyncio.sleep(seconds)
            self.finished.append("slow")
            return "slept"

        sse = transport == "sse"
        self.app = self._recording(server.sse_app() if sse else server.streamable_http_app())
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.url = f"http://127.0.0.1:{self.port}/{'sse' if sse else 'mcp'}"
        self._uvicorn = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                      log_level="warning"))

    @property
    def listings(self) -> int:
        """``tools/list`` requests, less those the SDK's client makes right after a ``tools/call``
        (it lists again to check the result against the tool's output schema)."""
        return sum(m == "tools/list" and before != "tools/call"
                   for before, m in zip(["", *self.methods], self.methods))

    def clear(self) -> None:
        self.seen.clear()
        self.methods.clear()
        self.finished.clear()

    def _recording(self, app: Any) -> Any:
        async def asgi(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return await app(scope, receive, send)
            self.headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            body = b""

            async def recording_receive() -> Any:
                nonlocal body
                message = await receive()
                body += message.get("body", b"")
                if message["type"] == "http.request" and not message.get("more_body") and body:
                    self._record(body)
                return message
            await app(scope, recording_receive, send)
        return asgi

    def _record(self, body: bytes) -> None:
        try:
            message = json.loads(body)
        except ValueError:
            return
        for m in message if isinstance(message, list) else [message]:
            if isinstance(m, dict) and "method" in m:
                self.methods.append(m["method"])

    def __enter__(self) -> "LoopbackMcpServer":
        threading.Thread(target=self._uvicorn.run, daemon=True).start()
        deadline = time.monotonic() + 10
        while not self._uvicorn.started:
            assert time.monotonic() < deadline, "MCP test server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._uvicorn.should_exit = True

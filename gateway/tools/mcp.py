"""The gateway as an MCP client: a request's remote MCP server, checked, listed and called.

Rules: a ``server_url`` is http(s) and its host passes the allowlist (``McpSettings``) before any
connection is made; link-local and cloud-metadata addresses are refused whatever the list says.
Each operation opens its own session (the official ``mcp`` SDK) with the request's ``headers``:
Streamable HTTP, or the old HTTP+SSE transport for a server that refuses the Streamable HTTP
handshake with an error (not for one that cannot be reached). Each is bounded by
``min(call_timeout_s, what is left of the response's deadline)``.
Headers live only in this module's calls: they are never logged, stored or echoed. Every failure
becomes an ``McpFailure`` with a message for the response (the SDK's errors say no more than that).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from ..errors import APIError

METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "169.254.169.254", "fd00:ec2::254"})
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class McpSettings:
    """``allowed_hosts``: host names (or ``*`` for any public host) a request may name;
    ``call_timeout_s`` bounds one listing or call, ``response_timeout_s`` all of a response's MCP
    work, ``max_turns`` the model turns of one response (the last one may not call a tool)."""

    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    call_timeout_s: float = 30.0
    response_timeout_s: float = 120.0
    max_turns: int = 5

    def __post_init__(self) -> None:
        if not (self.call_timeout_s > 0 and self.response_timeout_s > 0 and self.max_turns >= 1):
            raise ValueError("MCP timeouts must be > 0 and max_turns >= 1")

    @classmethod
    def parse_hosts(cls, text: str) -> tuple[str, ...]:
        return tuple(h.strip().lower() for h in text.split(",") if h.strip())


class McpFailure(Exception):
    """An MCP listing or call that did not succeed: ``str()`` is what the response says (a failed
    listing's ``error``), ``error`` the failed call's ``mcp_call.error`` object: an
    ``mcp_tool_execution_error`` (the tool ran and reported an error, its ``content``), an
    ``http_error`` (the server answered with an HTTP error status) or an ``mcp_protocol_error``
    (a JSON-RPC error: the server's, or the SDK's codes for a timeout, -32001, and for no
    answer, -32000)."""

    def __init__(self, message: str, error: dict[str, Any] | None = None):
        super().__init__(message)
        self.error = error or connection_closed(message)


@functools.cache
def sdk() -> SimpleNamespace:
    """The parts of the ``mcp`` SDK (and ``httpx2``) used here, imported on the first MCP listing
    or call rather than when the gateway starts (~0.7 s of its start otherwise)."""
    import httpx2
    from mcp import Client
    from mcp.client.sse import sse_client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import MCPError
    from mcp.types import CONNECTION_CLOSED, INVALID_PARAMS, REQUEST_TIMEOUT

    return SimpleNamespace(httpx2=httpx2, Client=Client, sse_client=sse_client,
                           streamable_http_client=streamable_http_client, MCPError=MCPError,
                           CONNECTION_CLOSED=CONNECTION_CLOSED, INVALID_PARAMS=INVALID_PARAMS,
                           REQUEST_TIMEOUT=REQUEST_TIMEOUT)


def protocol_error(code: int, message: str) -> dict[str, Any]:
    return {"type": "mcp_protocol_error", "code": code, "message": message}


def connection_closed(message: str) -> dict[str, Any]:
    """The SDK's error for a call that got no answer (or was never run)."""
    return protocol_error(sdk().CONNECTION_CLOSED, message)


def check_server_url(url: str, settings: McpSettings, param: str) -> None:
    """400 naming ``param`` unless ``url`` is http(s) on an allowed, non-link-local host."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise APIError.invalid(f"'{param}' must be an http or https URL.", param)
    if host in METADATA_HOSTS or _link_local(host):
        raise APIError.invalid(f"'{param}' names a link-local or metadata address ({host}); "
                               "MCP servers there are never called.", param)
    if "*" not in settings.allowed_hosts and host not in settings.allowed_hosts:
        raise APIError.invalid(f"'{param}' names host '{host}', which is not in this server's MCP "
                               "allowlist (TANDEM_MCP_ALLOWED_HOSTS).", param)


def _link_local(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return address.is_link_local or address.is_unspecified


@dataclass
class McpServer:
    """One ``{type: mcp}`` tool of a request: where it is, its headers, its response's deadline."""

    label: str
    url: str
    headers: dict[str, str]
    settings: McpSettings
    deadline: float = field(default=0.0)      # time.monotonic() after which nothing more runs
    transport: str | None = None              # "streamable-http" or "sse", once one has worked

    async def list_tools(self, allowed: list[str] | None) -> list[dict[str, Any]]:
        """The server's tools (those in ``allowed``, if given) as ``mcp_list_tools`` entries."""
        result = await self._run(lambda c: c.list_tools(), "listing the tools")
        return [{"name": t.name, "input_schema": t.input_schema, "description": t.description,
                 "annotations": t.annotations.model_dump(exclude_none=True) if t.annotations else None}
                for t in result.tools if allowed is None or t.name in allowed]

    async def call(self, name: str, arguments: str) -> str:
        """Run tool ``name``; its text output (``McpFailure`` if it failed)."""
        try:
            args = json.loads(arguments or "{}")
        except json.JSONDecodeError:
            message = f"The arguments for '{name}' are not JSON."
            raise McpFailure(message, protocol_error(sdk().INVALID_PARAMS, message)) from None
        result = await self._run(lambda c: c.call_tool(name, args), f"calling '{name}'")
        text = "\n".join(getattr(part, "text", "") for part in result.content)
        if result.is_error:
            content = [part.model_dump(mode="json", exclude_none=True) for part in result.content]
            raise McpFailure(text or f"Tool '{name}' failed.",
                             {"type": "mcp_tool_execution_error", "content": content})
        return text

    async def _run(self, operation: Any, what: str) -> Any:
        if not sdk.cache_info().currsize:   # the first MCP use imports the SDK off the event loop
            await asyncio.to_thread(sdk)
        budget = min(self.settings.call_timeout_s, self.deadline - time.monotonic())
        if budget <= 0:
            message = (f"The response's MCP deadline ({self.settings.response_timeout_s:g} s) "
                       f"passed before {what}.")
            raise McpFailure(message, protocol_error(sdk().REQUEST_TIMEOUT, message))
        try:
            async with asyncio.timeout(budget):
                return await self._session(operation, budget)
        except TimeoutError:
            message = f"MCP server '{self.label}' did not answer within {budget:g} s while {what}."
            raise McpFailure(message, protocol_error(sdk().REQUEST_TIMEOUT, message)) from None
        except Exception as exc:       # the SDK raises exception groups, httpx and protocol errors
            message = f"MCP server '{self.label}' failed while {what}: {_reason(exc)}"
            raise McpFailure(message, _error_object(_innermost(exc), message)) from None

    async def _session(self, operation: Any, budget: float) -> Any:
        """Run ``operation`` over Streamable HTTP, or over HTTP+SSE when the server answered the
        Streamable HTTP handshake with an error (an old server); the transport that worked is kept
        for the response's later operations."""
        mcp = sdk()
        connected = False
        if self.transport != "sse":
            try:
                async with mcp.httpx2.AsyncClient(headers=self.headers, timeout=budget) as http:
                    async with mcp.Client(mcp.streamable_http_client(self.url, http_client=http)) as client:
                        connected, self.transport = True, "streamable-http"
                        return await operation(client)
            except Exception as exc:
                if connected or self.transport is not None or not _not_streamable(exc):
                    raise
            self.transport = "sse"
        async with mcp.Client(mcp.sse_client(self.url, headers=self.headers, timeout=budget,
                                             sse_read_timeout=budget)) as client:
            return await operation(client)


def _error_object(exc: BaseException, message: str) -> dict[str, Any]:
    mcp = sdk()
    if isinstance(exc, mcp.httpx2.HTTPStatusError):
        return {"type": "http_error", "code": exc.response.status_code, "message": message}
    return protocol_error(exc.code if isinstance(exc, mcp.MCPError) else mcp.CONNECTION_CLOSED, message)


def _not_streamable(exc: BaseException) -> bool:
    """The server answered, but not as a Streamable HTTP server (an error status or reply)."""
    mcp = sdk()
    return isinstance(_innermost(exc), (mcp.MCPError, mcp.httpx2.HTTPStatusError))


def _innermost(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _reason(exc: BaseException) -> str:
    """The innermost message of an exception group, without the headers it was sent with."""
    exc = _innermost(exc)
    return f"{type(exc).__name__}: {exc}"[:300]

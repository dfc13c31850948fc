"""A response with remote MCP tools: the gateway lists, calls and answers them over model turns.

Life of one (non-streamed, foreground): each ``{type: mcp}`` tool's server is checked against the
allowlist (400) and listed (or its listing found in the conversation and reused) → one
``mcp_list_tools`` item each; a failed listing is a 424 and nothing runs. Then up to
``McpSettings.max_turns`` model turns, each a normal generation through prefill and decode, with
the listed tools offered as functions beside the request's own. Each call of an MCP tool is run on
its server → an ``mcp_call`` item with ``output`` or ``error``, and the next turn sees it. The loop
ends at a turn without MCP calls (text, or the request's own function calls for the client), at a
turn that did not complete, or after the last turn, which (like any turn once ``max_tool_calls``
calls have run) may not call a tool. ``usage`` sums every turn. A named or ``required``
``tool_choice`` holds for the first turn; later turns are ``auto``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ..auth import project
from ..backend import GenerateParams
from ..errors import APIError
from ..generation import Generation
from ..middleware import arrival, request_id
from ..params import sampling_params
from ..state import GatewayState
from ..tools.definitions import FunctionTool
from ..tools.mcp import McpFailure, McpServer, check_server_url
from .conversation import ENGINE_PARAMS, conversation_items, turn_prompt
from .events import ResponseEvents
from .models import ResponseCreateRequest
from .object import finish, new_id, new_response
from .run import ResponseRun
from .state import ResponsesState
from .structured import response_constraints


@dataclasses.dataclass
class McpLoop:
    """One MCP response as it runs: its servers, their tools, the output and usage so far."""

    request: Request
    body: ResponseCreateRequest
    state: GatewayState
    response_id: str
    servers: dict[str, McpServer] = dataclasses.field(default_factory=dict)
    owner: dict[str, str] = dataclasses.field(default_factory=dict)        # tool name → label
    offered: list[FunctionTool] = dataclasses.field(default_factory=list)
    output: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    usages: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    calls_run: int = 0

    async def list_tools(self, history: list[dict[str, Any]]) -> None:
        """One ``mcp_list_tools`` item per server (reused from ``history`` if there); 424 on failure."""
        for i, tool in enumerate(self.body.mcp_tools):
            server = self.servers[tool.server_label]
            known = [h for h in history if h.get("type") == "mcp_list_tools"
                     and h.get("server_label") == tool.server_label and not h.get("error")]
            if known:
                listed = [t for t in known[-1]["tools"] if tool.allowed is None or t["name"] in tool.allowed]
            else:
                try:
                    listed = await server.list_tools(tool.allowed)
                except McpFailure as exc:
                    raise APIError(424, f"Listing the tools of MCP server '{tool.server_label}' failed: "
                                        f"{exc}", param=f"tools[{i}]", code="mcp_list_tools_failed") from None
                self.output.append({"type": "mcp_list_tools", "id": new_id("mcpl"),
                                    "server_label": tool.server_label, "tools": listed})
            for t in listed:
                self.owner[t["name"]] = tool.server_label
                self.offered.append(FunctionTool(t["name"], _described(t.get("description"), tool),
                                                 t["input_schema"]))

    async def turns(self, items: list[dict[str, Any]]) -> tuple[str, str | None]:
        """Run model turns until one ends the loop; its (status, incomplete reason)."""
        limit = self.state.settings.mcp.max_turns
        for turn in range(limit):
            spent = self.body.max_tool_calls is not None and self.calls_run >= self.body.max_tool_calls
            response = await self._turn(items, first=turn == 0, no_calls=spent or turn == limit - 1)
            self.usages.append(response["usage"])
            calls = [i for i in response["output"] if i["type"] == "function_call" and i["name"] in self.owner]
            rest = [i for i in response["output"] if i not in calls]
            self.output += rest
            for call in calls:
                self.output.append(await self._call(call))
            client_calls = any(i["type"] == "function_call" for i in rest)
            if response["status"] != "completed" or not calls or client_calls:
                return response["status"], (response.get("incomplete_details") or {}).get("reason")
        return "completed", None

    async def _turn(self, items: list[dict[str, Any]], *, first: bool, no_calls: bool) -> dict[str, Any]:
        """One model turn over the conversation so far; its Response (not stored)."""
        body, settings = self.body, self.state.settings
        constraints = response_constraints(body, self.offered, first_turn=first, no_calls=no_calls)
        prompt = await turn_prompt(items + self.output, body, self.state.backend, constraints.tools)
        sampling = sampling_params(body, max_tokens=body.max_output_tokens, engine_params=ENGINE_PARAMS)
        sampling = dataclasses.replace(sampling, grammar=constraints.grammar)
        turn_id = f"{self.response_id}_t{len(self.usages)}"
        params = GenerateParams(turn_id, prompt.token_ids, sampling)
        generation = Generation(self.state.backend, params, arrival(self.request),
                                settings.request_timeout_s, ENGINE_PARAMS)
        builder = ResponseEvents(new_response(turn_id, body, settings.served_model_name, "in_progress"),
                                 new_id("msg"), lazy_message=constraints.parse_calls)
        run = ResponseRun(generation, builder, None, log=None, input_tokens=len(prompt.token_ids),
                          spawn=lambda coro: coro.close(), parse_calls=constraints.parse_calls)
        try:
            await run.start()
            async for _ in run.events(to_client=False):
                pass
        finally:
            await run.abandon()
        if run.error is not None:
            raise run.error
        return run.response

    async def _call(self, call: dict[str, Any]) -> dict[str, Any]:
        """Run one MCP call (unless ``max_tool_calls`` are spent) → its ``mcp_call`` item."""
        label = self.owner[call["name"]]
        item = {"type": "mcp_call", "id": new_id("mcp"), "server_label": label, "name": call["name"],
                "arguments": call["arguments"], "output": None, "error": None, "status": "completed"}
        if self.body.max_tool_calls is not None and self.calls_run >= self.body.max_tool_calls:
            return {**item, "status": "incomplete", "error": f"Not run: max_tool_calls "
                                                             f"({self.body.max_tool_calls}) reached."}
        self.calls_run += 1
        try:
            return {**item, "output": await self.servers[label].call(call["name"], call["arguments"])}
        except McpFailure as exc:
            return {**item, "status": "failed", "error": str(exc)}


def summed_usage(usages: list[dict[str, Any]]) -> dict[str, Any]:
    """The usage of every turn added up (``decode_time_arr`` joined in turn order)."""
    total = dict(usages[0])
    for u in usages[1:]:
        for key in ("input_tokens", "output_tokens", "total_tokens", "prefill_time"):
            total[key] += u[key]
        total["decode_time_arr"] = total["decode_time_arr"] + u["decode_time_arr"]
        total["input_tokens_details"] = {"cached_tokens": total["input_tokens_details"]["cached_tokens"]
                                         + u["input_tokens_details"]["cached_tokens"], "cache_write_tokens": 0}
    return total


async def run_mcp_response(request: Request, body: ResponseCreateRequest, state: GatewayState,
                           shared: ResponsesState) -> Response:
    """POST /v1/responses with ``{type: mcp}`` tools (see the module docstring)."""
    mcp = state.settings.mcp
    deadline = time.monotonic() + mcp.response_timeout_s
    loop = McpLoop(request, body, state, f"resp_{request_id(request)}")
    for i, tool in enumerate(body.tools or ()):
        if tool.type == "mcp":
            check_server_url(tool.server_url, mcp, f"tools[{i}].server_url")
            loop.servers[tool.server_label] = McpServer(tool.server_label, tool.server_url,
                                                        tool.request_headers(), mcp, deadline)
    items = await conversation_items(body, shared.store, project(request))
    await loop.list_tools(items)
    status, reason = await loop.turns(items)
    response = finish(new_response(loop.response_id, body, state.settings.served_model_name, status),
                      status, output=loop.output, usage=summed_usage(loop.usages),
                      incomplete_reason=reason)
    if body.keep:
        await shared.store.create(response, items, project(request))
    return JSONResponse(response)


def _described(description: str | None, tool) -> str | None:
    """A listed tool's description as the model reads it: with its server's
    ``server_description`` (the request's context for that server) after it."""
    if not tool.server_description:
        return description
    about = f"(server {tool.server_label}: {tool.server_description})"
    return f"{description} {about}" if description else about

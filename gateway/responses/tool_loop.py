"""A response with remote MCP tools: the gateway lists, calls and answers them over model turns.

Life of an ``McpRun`` (a ``ResponseRun`` whose Generations are made as it goes; stored, streamed,
replayed, backgrounded and cancelled like any run):
1. Before it starts (``prepare_mcp_run``, so these are HTTP errors): each ``{type: mcp}`` tool's
   ``server_url`` passes the allowlist (400); each ``mcp_approval_response`` in the input answers an
   ``mcp_approval_request`` of the conversation not answered before (400 naming
   ``input[i].approval_request_id``) whose server is in ``tools`` (400 naming ``tools``).
2. Listing: each server's tools (filtered by ``allowed_tools``) → one ``mcp_list_tools`` item, unless
   the conversation already holds a listing for that label (then it is reused, not fetched). A
   failed listing fails the response: a 424 for a non-streamed foreground request (the listing runs
   in ``start()``, before any answer), else ``response.mcp_list_tools.failed`` and ``response.failed``.
3. Approved calls run (``mcp_call`` with ``approval_request_id``); declined ones do not (the model
   reads that the user declined them).
4. Up to ``McpSettings.max_turns`` model turns, each a normal generation through prefill and decode,
   with the listed tools offered as functions beside the request's own. A call of a tool that needs
   approval becomes an ``mcp_approval_request``; any other MCP call is run on its server → ``mcp_call``
   with ``output`` or ``error``, and the next turn sees it. The loop ends at a turn without MCP calls
   (text, or the request's own function calls for the client), a turn that asked for approval, a turn
   that did not complete, or after the last turn, which (like any turn once ``max_tool_calls`` calls
   have run) may not call a tool. A named or ``required`` ``tool_choice`` holds for the first turn.
``usage`` sums every turn. A client that goes away (or a cancel) stops the loop where it is: the
call or turn in flight is cancelled and nothing further runs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, AsyncIterator

from fastapi import Request

from ..auth import project
from ..backend import GenerateParams
from ..errors import APIError
from ..generation import Generation
from ..middleware import arrival, request_id
from ..params import sampling_params
from ..state import GatewayState
from ..tools.calls import ToolOutput
from ..tools.definitions import FunctionTool
from ..tools.mcp import McpFailure, McpServer, check_server_url, connection_closed
from ..usage import UsageMeter
from ..routing import affinity_key
from .conversation import ENGINE_PARAMS, chat_messages, conversation_items, turn_prompt
from .event_log import EventLog
from .events import ResponseEvents
from .models import ResponseCreateRequest
from .object import new_id, new_response, usage_body
from .run import ResponseRun
from .state import ResponsesState
from .structured import response_constraints
from .tool_params import McpToolParam

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Approval:
    """An ``mcp_approval_response`` of the input and the request it answers."""

    request: dict[str, Any]
    approve: bool


class McpRun(ResponseRun):
    def __init__(self, request: Request, body: ResponseCreateRequest, state: GatewayState,
                 items: list[dict[str, Any]], servers: dict[str, McpServer], approvals: list[Approval],
                 builder: ResponseEvents, shared: ResponsesState, *, log: EventLog | None):
        super().__init__(None, builder, shared.store if body.keep else None, log=log, input_tokens=0,
                         spawn=shared.tasks.spawn, leases=shared.leases)
        self.arrival = arrival(request)
        self.body, self.state, self.items = body, state, items
        self.servers, self.approvals = servers, approvals
        self.eager = not (body.stream or body.background)    # list in start(): a failure is a 424
        self.listed: dict[str, list[dict[str, Any]]] = {}
        self.offered: list[FunctionTool] = []
        self.turn_usages: list[dict[str, Any]] = []
        self.calls_run = 0

    async def start(self) -> None:
        self._started = True
        if self.eager:
            for i, tool in self.body.mcp_tools:
                if self._known_listing(tool) is None:
                    try:
                        self.listed[tool.server_label] = await self.servers[tool.server_label].list_tools(tool.allowed)
                    except McpFailure as exc:
                        raise _listing_failed(tool, i, exc) from None

    def usage(self) -> dict[str, Any]:
        current = [usage_body(self.generation.usage, self.input_tokens)] if self.generation else []
        return summed_usage(self.turn_usages + current)

    async def _generate(self) -> AsyncIterator[dict[str, Any]]:
        if not self._started:
            await self.start()
        for i, tool in self.body.mcp_tools:
            async for event in self._listing(i, tool):
                yield event
        for approval in self.approvals:
            async for event in self._approved(approval):
                yield event
        limit = self.state.settings.mcp.max_turns
        for turn in range(limit):
            for event in await self._next_turn(first=turn == 0, no_calls=self._spent() or turn == limit - 1):
                yield await self._emit(event)
            async for event in self._turn_events():
                yield event
            runnable = self._runnable_calls()
            for index in runnable:
                async for event in self._call(index):
                    yield event
            if self._outcome() != ("completed",) or not runnable or self._turn_has("function_call") \
                    or self._turn_has("mcp_approval_request"):
                return

    # -- listings -------------------------------------------------------------------------------------
    async def _listing(self, i: int, tool: McpToolParam) -> AsyncIterator[dict[str, Any]]:
        """The server's tools: reused from the conversation, or listed (with their events)."""
        tools = self._known_listing(tool)
        if tools is None:
            index, events = self.builder.listing_started(tool.server_label)
            for event in events:
                yield await self._emit(event)
            failure = None
            try:
                tools = self.listed.get(tool.server_label)
                if tools is None:
                    tools = await self.servers[tool.server_label].list_tools(tool.allowed)
            except McpFailure as exc:
                failure, tools = exc, []
            for event in self.builder.listing_done(index, tools, str(failure) if failure else None):
                yield await self._emit(event)
            if failure is not None:
                raise _listing_failed(tool, i, failure)
        for t in tools:
            self.builder.mcp_tools[t["name"]] = (tool.server_label, tool.asks_approval(t["name"]))
            self.offered.append(FunctionTool(t["name"], _described(t.get("description"), tool), t["input_schema"]))

    def _known_listing(self, tool: McpToolParam) -> list[dict[str, Any]] | None:
        """The tools of the conversation's last good listing of ``tool``'s server, if any."""
        known = [h for h in self.items if h.get("type") == "mcp_list_tools"
                 and h.get("server_label") == tool.server_label and not h.get("error")]
        if not known:
            return None
        return [t for t in known[-1]["tools"] if tool.allowed is None or t["name"] in tool.allowed]

    # -- calls ----------------------------------------------------------------------------------------
    async def _approved(self, approval: Approval) -> AsyncIterator[dict[str, Any]]:
        if not approval.approve:
            return
        request = approval.request
        index, events = self.builder.approved_call(request["server_label"], request["name"],
                                                   request["arguments"], request["id"])
        for event in events:
            yield await self._emit(event)
        for event in await self._result(index):
            yield await self._emit(event)

    async def _call(self, index: int) -> AsyncIterator[dict[str, Any]]:
        for event in self.builder.call_running(index):
            yield await self._emit(event)
        for event in await self._result(index):
            yield await self._emit(event)

    async def _result(self, index: int) -> list[dict[str, Any]]:
        """Run the ``mcp_call`` at ``index`` (unless ``max_tool_calls`` are spent) → its result events."""
        item = self.builder.items[index]
        if self._spent():
            return self.builder.call_result(index, None, connection_closed(
                f"Not run: max_tool_calls ({self.body.max_tool_calls}) reached."))
        self.calls_run += 1
        try:
            output = await self.servers[item["server_label"]].call(item["name"], item["arguments"])
        except McpFailure as exc:
            return self.builder.call_result(index, None, exc.error)
        return self.builder.call_result(index, output, None)

    def _spent(self) -> bool:
        return self.body.max_tool_calls is not None and self.calls_run >= self.body.max_tool_calls

    def _runnable_calls(self) -> list[int]:
        """Output indices of this turn's MCP calls the model finished writing."""
        indices = [self.builder.turn_calls[c.index] for c in self.output.calls if c.done]
        return [i for i in indices if self.builder.items[i]["type"] == "mcp_call"]

    def _turn_has(self, kind: str) -> bool:
        return any(self.builder.items[i]["type"] == kind for i in self.builder.turn_calls)

    # -- model turns ----------------------------------------------------------------------------------
    async def _next_turn(self, *, first: bool, no_calls: bool) -> list[dict[str, Any]]:
        """Make the next turn's Generation (over the conversation and the output so far) and wait
        for its first token; the events that close the last turn."""
        body, settings = self.body, self.state.settings
        if self.generation is not None:
            self.turn_usages.append(usage_body(self.generation.usage, self.input_tokens))
            await self.generation.aclose()
        closing = self.builder.next_turn(new_id("msg"))
        constraints = response_constraints(body, self.offered, first_turn=first, no_calls=no_calls)
        prompt = await turn_prompt(self.items + self.builder.items, body, self.state.backend,
                                   constraints.tools)
        sampling = sampling_params(body, max_tokens=body.max_output_tokens, engine_params=ENGINE_PARAMS)
        params = GenerateParams(f"{self.response_id}_t{len(self.turn_usages)}", prompt.token_ids,
                                dataclasses.replace(sampling, grammar=constraints.grammar),
                                affinity=affinity_key(chat_messages(self.items, None)))
        log.info("%s: %d input tokens, %d MCP calls run so far", params.request_id,
                 len(prompt.token_ids), self.calls_run)
        self.generation = Generation(self.state.backend, params, self.arrival, settings.request_timeout_s,
                                     ENGINE_PARAMS)
        self.input_tokens = len(prompt.token_ids)
        self.output = ToolOutput(parse=constraints.parse_calls)
        self.builder.lazy_message = constraints.parse_calls
        await self.generation.start()
        return closing


def summed_usage(usages: list[dict[str, Any]]) -> dict[str, Any]:
    """The usage of every turn added up (``decode_time_arr`` joined in turn order)."""
    if not usages:
        return usage_body(UsageMeter(0.0), 0)
    total = dict(usages[0])
    for u in usages[1:]:
        for key in ("input_tokens", "output_tokens", "total_tokens", "prefill_time"):
            total[key] += u[key]
        total["decode_time_arr"] = total["decode_time_arr"] + u["decode_time_arr"]
        total["input_tokens_details"] = {"cached_tokens": total["input_tokens_details"]["cached_tokens"]
                                         + u["input_tokens_details"]["cached_tokens"], "cache_write_tokens": 0}
    return total


async def prepare_mcp_run(request: Request, body: ResponseCreateRequest, state: GatewayState,
                          shared: ResponsesState, log: EventLog | None
                          ) -> tuple[McpRun, list[dict[str, Any]]]:
    """The run of a request with MCP tools or approvals, and its input items (step 1 above)."""
    mcp = state.settings.mcp
    deadline = time.monotonic() + mcp.response_timeout_s
    servers: dict[str, McpServer] = {}
    for i, tool in body.mcp_tools:
        check_server_url(tool.server_url, mcp, f"tools[{i}].server_url")
        servers[tool.server_label] = McpServer(tool.server_label, tool.server_url,
                                               tool.request_headers(), mcp, deadline)
    items = await conversation_items(body, shared.store, project(request))
    approvals = _approvals(body, items, servers)
    response_id = f"resp_{request_id(request)}"
    status = "queued" if body.background else "in_progress"
    builder = ResponseEvents(new_response(response_id, body, state.settings.served_model_name, status),
                             new_id("msg"))
    return McpRun(request, body, state, items, servers, approvals, builder, shared, log=log), items


def _approvals(body: ResponseCreateRequest, items: list[dict[str, Any]],
               servers: dict[str, McpServer]) -> list[Approval]:
    """The input's approval responses, each matched to an unanswered request of the conversation."""
    history = items[:len(items) - len(body.input)]
    requests = {h["id"]: h for h in history if h.get("type") == "mcp_approval_request"}
    answered = {h["approval_request_id"] for h in history if h.get("type") == "mcp_approval_response"}
    approvals = []
    for i, answer in body.approvals:
        request = requests.get(answer.approval_request_id)
        param = f"input[{i}].approval_request_id"
        if request is None:
            raise APIError.invalid(f"No mcp_approval_request '{answer.approval_request_id}' in the "
                                   "conversation (previous_response_id).", param)
        if answer.approval_request_id in answered:
            raise APIError.invalid(f"mcp_approval_request '{answer.approval_request_id}' was already "
                                   "answered.", param)
        if request["server_label"] not in servers:
            raise APIError.invalid(f"input[{i}] answers a request of MCP server "
                                   f"'{request['server_label']}'; include that server's mcp tool in "
                                   "'tools' (its headers are never stored).", "tools")
        answered.add(answer.approval_request_id)
        approvals.append(Approval(request, answer.approve))
    return approvals


def _listing_failed(tool: McpToolParam, i: int, exc: McpFailure) -> APIError:
    return APIError(424, f"Listing the tools of MCP server '{tool.server_label}' failed: {exc}",
                    param=f"tools[{i}]", code="mcp_list_tools_failed")


def _described(description: str | None, tool: McpToolParam) -> str | None:
    """A listed tool's description as the model reads it: with its server's
    ``server_description`` (the request's context for that server) after it."""
    if not tool.server_description:
        return description
    about = f"(server {tool.server_label}: {tool.server_description})"
    return f"{description} {about}" if description else about

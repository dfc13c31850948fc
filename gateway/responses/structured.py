"""The Responses API's ``tools``, ``tool_choice``, ``parallel_tool_calls`` and ``text.format`` as the
engine's grammar (the rules are Chat Completions', gateway/chat/structured.py; only the shapes differ:
tools are flat, a named choice is ``{type: function, name}``)."""

from __future__ import annotations

from dataclasses import dataclass

from services.engine.grammar import GrammarSpec

from ..tools.definitions import FunctionTool, check_tools, format_grammar, tool_choice, tool_grammar
from .models import ResponseCreateRequest
from .tool_params import NamedToolChoice


@dataclass(frozen=True)
class ResponseConstraints:
    tools: list[FunctionTool]
    grammar: GrammarSpec | None
    parse_calls: bool           # the output may hold a tool-call tag


def response_constraints(body: ResponseCreateRequest, offered: list[FunctionTool] = (), *,
                         first_turn: bool = True, no_calls: bool = False) -> ResponseConstraints:
    """``offered``: MCP tools offered as functions; ``tool_choice`` other than ``auto``/``none``
    holds for the first turn only; ``no_calls``: this turn may not call a tool."""
    tools = [FunctionTool(t.name, t.description, t.parameters, t.strict) for t in body.function_tools]
    check_tools(tools, [f"tools[{i}].parameters" for i in range(len(tools))])
    tools += offered
    check_tools(tools, [f"tools[{i}].parameters" for i in range(len(tools))])
    name = body.tool_choice.name if isinstance(body.tool_choice, NamedToolChoice) else None
    mode = None if name else body.tool_choice
    if no_calls or not first_turn:
        mode, name = "none" if no_calls else "auto", None
    choice = tool_choice(mode, name, tools)
    grammar = tool_grammar(tools, choice, body.parallel_tool_calls is not False)
    fmt = body.text.format if body.text else None
    if grammar is None and fmt is not None:
        grammar = format_grammar(fmt.type, fmt.schema_, "text.format.schema")
    return ResponseConstraints(tools, grammar, parse_calls=bool(tools) and choice.mode != "none")

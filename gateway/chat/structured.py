"""Chat Completions' tools and ``response_format``, as the engine's grammar and the tool-aware prompt.

- ``tools`` (``type: function``) are listed in the system prompt (gateway/tools/prompt.py) and the
  output is constrained by ``tool_choice``: ``auto`` (text, or calls once the model opens the tag),
  ``required``/``any`` (calls from the first token), a named function (calls of that one), ``none``
  (the tag is forbidden); ``parallel_tool_calls: false`` allows exactly one call.
- ``response_format``: ``json_object`` or ``json_schema`` (its ``schema`` checked here).
- ``finish_reason``: ``tool_calls`` when the answer made calls and ended normally; a request whose
  grammar admitted no further token (``grammar``) reports ``length`` — it ended early, and clients
  that know only OpenAI's reasons treat it so — and says why in the choice's ``stop_reason:
  "grammar"`` (a Tandem extension; ``stop_reason`` is absent otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.engine.grammar import GrammarSpec

from ..tools.definitions import FunctionTool, check_tools, format_grammar, tool_choice, tool_grammar
from ..tools.prompt import render
from .models import ChatCompletionRequest, NamedToolChoice


@dataclass(frozen=True)
class ChatConstraints:
    tools: list[FunctionTool]
    grammar: GrammarSpec | None
    parse_calls: bool           # the output may hold a tool-call tag

    def template_messages(self, body: ChatCompletionRequest) -> list[dict[str, str]]:
        return render([m.for_template() for m in body.messages], self.tools)


def chat_constraints(body: ChatCompletionRequest) -> ChatConstraints:
    """Tools, choice and format of ``body``, checked (bad schemas and names → 400)."""
    tools = [FunctionTool(t.function.name, t.function.description, t.function.parameters, t.function.strict)
             for t in body.tools or ()]
    check_tools(tools, [f"tools[{i}].function.parameters" for i in range(len(tools))])
    named = isinstance(body.tool_choice, NamedToolChoice)
    choice = tool_choice(None if named else body.tool_choice, body.tool_choice.function.name if named else None,
                         tools)
    grammar = tool_grammar(tools, choice, body.parallel_tool_calls is not False)
    if grammar is None and body.response_format is not None:
        fmt = body.response_format
        grammar = format_grammar(fmt.type, fmt.json_schema.schema_ if fmt.json_schema else None,
                                 "response_format.json_schema.schema")
    return ChatConstraints(tools, grammar, parse_calls=bool(tools) and choice.mode != "none")


def finish_fields(reason: str | None, called: bool) -> dict[str, str | None]:
    """The choice's ``finish_reason`` and, for a grammar ending, ``stop_reason``."""
    fields = {"finish_reason": chat_finish_reason(reason, called)}
    if reason == "grammar":
        fields["stop_reason"] = "grammar"
    return fields


def chat_finish_reason(reason: str | None, called: bool) -> str | None:
    if reason == "grammar":
        return "length"
    return "tool_calls" if called and reason == "stop" else reason

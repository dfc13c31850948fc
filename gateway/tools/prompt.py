"""The tool-aware prompt: SmolLM2's own chat template knows no tools, so the conversation is
rewritten into plain ChatML turns following the SmolLM2 family's function-calling convention
(SmolLM2-1.7B-Instruct's training format, Ollama's smollm2 template):

- the tools are listed in the system prompt inside ``<tools>…</tools>`` (after the caller's own
  system text, if any), with the call format;
- an assistant turn that called tools ends with ``<tool_call>[{"name": …, "arguments": …}]</tool_call>``;
- tool results come back as a user turn of ``<tool_response>…</tool_response>`` blocks (one block per
  result; consecutive results share the turn).

Input: messages as ``{"role", "content", "tool_calls"?}`` dicts, where ``tool_calls`` is a list of
``(name, arguments JSON text)``; output: ``{"role", "content"}`` dicts for the model's template.
"""

from __future__ import annotations

import json
from typing import Any

from services.engine.grammar import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

from .definitions import FunctionTool

TOOLS_PROMPT = """You are an expert in composing functions. You are given a question and a set of possible functions.
Based on the question, you will need to make one or more function/tool calls to achieve the purpose.
If none of the functions can be used, answer the question in plain text.

You have access to the following tools:
<tools>{tools}</tools>

To call functions, answer with the calls in this format, and nothing after it:
<tool_call>[
{{"name": "func_name1", "arguments": {{"argument1": "value1", "argument2": "value2"}}}},
... (more tool calls as required)
]</tool_call>
Tool results come back inside <tool_response></tool_response>."""


def tools_system_prompt(tools: list[FunctionTool]) -> str:
    return TOOLS_PROMPT.format(tools=json.dumps([t.for_prompt() for t in tools]))


def render(messages: list[dict[str, Any]], tools: list[FunctionTool]) -> list[dict[str, str]]:
    """Template messages for a conversation that may hold tools, calls and results."""
    out: list[dict[str, str]] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "tool":
            block = f"<tool_response>{content}</tool_response>"
            if out and out[-1].get("tool_results"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "tool_results": "1"})
            continue
        if role == "assistant" and m.get("tool_calls"):
            content += calls_text(m["tool_calls"])
        out.append({"role": role, "content": content})
    out = [{"role": m["role"], "content": m["content"]} for m in out]
    if tools:
        prompt = tools_system_prompt(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + prompt}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def calls_text(calls: list[tuple[str, str]]) -> str:
    """Calls as the model writes them (arguments that are not JSON are kept as a string)."""
    return TOOL_CALL_OPEN + json.dumps([{"name": name, "arguments": _json_or_text(args)}
                                        for name, args in calls]) + TOOL_CALL_CLOSE


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text

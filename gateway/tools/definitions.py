"""Function tools and output formats as both APIs hand them to the engine.

Chat Completions nests a tool under ``function`` and Responses keeps it flat; both become a
``FunctionTool``. ``tool_choice`` (``auto``, ``none``, ``required``, ``any`` = ``required``, or a
named function) becomes a ``ToolChoice``. ``tool_grammar`` and ``format_grammar`` turn them into
the engine's ``GrammarSpec`` (services/engine/grammar.py); every schema is checked here by building
its grammar, so one xgrammar cannot use is a 400 naming the request's field, before anything runs.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from services.engine import InvalidRequestError
from services.engine.grammar import GrammarSpec, ToolSpec, build_grammar

from ..errors import APIError


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def for_prompt(self) -> dict[str, Any]:
        """The tool as the model reads it in the system prompt."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["parameters"] = self.parameters or {"type": "object", "properties": {}}
        return out


@dataclass(frozen=True)
class ToolChoice:
    mode: Literal["auto", "none", "required"]
    name: str | None = None         # a named function: required, and only that one


def tool_choice(mode: str | None, name: str | None, tools: list[FunctionTool],
                param: str = "tool_choice") -> ToolChoice:
    """``mode`` (``auto``/``none``/``required``/``any``) or a named function's ``name``."""
    if name is not None:
        if name not in {t.name for t in tools}:
            raise APIError.invalid(f"tool_choice names function '{name}', which is not in 'tools'.", param)
        return ToolChoice("required", name)
    if mode is None:
        return ToolChoice("auto")
    return ToolChoice("required" if mode in ("required", "any") else mode)


def check_tools(tools: list[FunctionTool], params: list[str]) -> None:
    """Refuse duplicate names and parameter schemas xgrammar cannot use (``params[i]`` names the
    schema field of tool ``i``)."""
    seen: set[str] = set()
    for tool, param in zip(tools, params):
        if tool.name in seen:
            raise APIError.invalid(f"Two tools are named '{tool.name}'; names must be unique.",
                                   param.rsplit(".", 1)[0] + ".name")
        seen.add(tool.name)
        if tool.parameters is not None:
            schema_text(tool.parameters, param)


def schema_text(schema: Any, param: str) -> str:
    """The schema as JSON text, after xgrammar has built a grammar from it (else a 400)."""
    if not isinstance(schema, dict):
        raise APIError.invalid(f"'{param}' must be a JSON Schema object.", param)
    text = json.dumps(schema)
    try:
        build_grammar(GrammarSpec("json_schema", schema=text))
    except InvalidRequestError as exc:
        raise APIError.invalid(f"Invalid schema for '{param}': {exc.message}", param,
                               code="invalid_schema") from None
    return text


def tool_grammar(tools: list[FunctionTool], choice: ToolChoice, parallel: bool) -> GrammarSpec | None:
    if not tools:
        return None
    chosen = [t for t in tools if choice.name in (None, t.name)]
    specs = tuple(ToolSpec(t.name, json.dumps(t.parameters) if t.parameters is not None else "")
                  for t in chosen)
    return GrammarSpec("tool_calls", tools=specs, tool_mode=choice.mode, parallel=parallel)


def format_grammar(kind: str, schema: dict[str, Any] | None, param: str) -> GrammarSpec | None:
    """``text`` → None; ``json_object``; ``json_schema`` with its (checked) schema."""
    if kind == "json_object":
        return GrammarSpec("json_object")
    if kind == "json_schema":
        return GrammarSpec("json_schema", schema=schema_text(schema, param))
    return None


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"

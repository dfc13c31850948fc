"""What a constrained request's output must look like: a ``GrammarSpec`` and the xgrammar
``Grammar`` built from it.

A spec is plain data (JSON Schema text, tool names and their ``parameters``), so it crosses
processes in the proto as itself — never pickled, never a compiled grammar — and every worker builds
the same grammar from it (``build_grammar`` is deterministic). The gateway calls ``build_grammar``
too, to refuse a schema xgrammar cannot handle with a 400 before anything runs.

The tool-call format is the SmolLM2 family's: ONE tag holding a JSON array of calls,
``<tool_call>[{"name": "...", "arguments": {...}}, ...]</tool_call>``. Tool modes:

| mode       | output                                                                           |
|------------|----------------------------------------------------------------------------------|
| `required` | the tag from the first token; 1+ calls (exactly 1 without ``parallel``)          |
| `auto`     | free text without the tag, then optionally the tag as in `required`, then the end |
| `none`     | free text in which the tag never appears                                         |

JSON is generated compactly (``any_whitespace=False``): a small model cannot loop on whitespace.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import InvalidRequestError

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

Kind = Literal["json_schema", "json_object", "tool_calls"]
ToolMode = Literal["auto", "required", "none"]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    parameters: str = ""        # JSON Schema text of the arguments; empty: any JSON object


@dataclass(frozen=True)
class GrammarSpec:
    """One request's output constraint. ``schema`` is JSON Schema text (``json_schema``)."""

    kind: Kind
    schema: str = ""
    tools: tuple[ToolSpec, ...] = field(default_factory=tuple)
    tool_mode: ToolMode = "required"
    parallel: bool = True

    def key(self) -> str:
        """A stable key for the compiled-grammar cache."""
        return json.dumps([self.kind, self.schema, [(t.name, t.parameters) for t in self.tools],
                           self.tool_mode, self.parallel])


def build_grammar(spec: GrammarSpec):
    """The xgrammar ``Grammar`` for ``spec``; ``InvalidRequestError`` if it cannot be built."""
    import xgrammar as xgr

    try:
        if spec.kind == "json_object":
            return _json({"type": "object"}, strict=False)
        if spec.kind == "json_schema":
            return _json(json.loads(spec.schema), strict=True)
        return _tool_grammar(spec)
    except InvalidRequestError:
        raise
    except (RuntimeError, ValueError, TypeError, xgr.InvalidJSONError) as exc:
        raise InvalidRequestError("grammar", f"the schema cannot be used for constrained decoding: "
                                             f"{_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    """xgrammar's message without its ``[time] file.cc:line:`` prefix."""
    text = (str(exc) or repr(exc)).splitlines()[0]
    return re.sub(r"^\[[^\]]*\] \S+:\d+: ", "", text)


def _json(schema: dict[str, Any], *, strict: bool):
    import xgrammar as xgr

    return xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=strict)


def calls_schema(tools: tuple[ToolSpec, ...], parallel: bool) -> dict[str, Any]:
    """JSON Schema of the array inside the tag: each element names one tool and its arguments."""
    variants = [{"type": "object",
                 "properties": {"name": {"const": t.name},
                                "arguments": json.loads(t.parameters) if t.parameters else {"type": "object"}},
                 "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    schema: dict[str, Any] = {"type": "array", "items": variants[0] if len(variants) == 1 else {"anyOf": variants},
                              "minItems": 1}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def _tool_grammar(spec: GrammarSpec):
    import xgrammar as xgr

    if not spec.tools:
        raise InvalidRequestError("tools", "a tool-call grammar needs at least one tool")
    text = xgr.Grammar.from_ebnf(text_without(TOOL_CALL_OPEN))
    if spec.tool_mode == "none":
        return text
    tagged = xgr.Grammar.concat(_literal(TOOL_CALL_OPEN), _json(calls_schema(spec.tools, spec.parallel), strict=True),
                                _literal(TOOL_CALL_CLOSE))
    if spec.tool_mode == "required":
        return tagged
    return xgr.Grammar.concat(text, xgr.Grammar.union(tagged, _literal("")))


def _literal(text: str):
    import xgrammar as xgr

    return xgr.Grammar.from_ebnf(f"root ::= {json.dumps(text)}")


def text_without(word: str) -> str:
    """EBNF for any text in which ``word`` never occurs (the automaton of its matched prefixes).

    Rule ``s{i}``: the text so far ends with ``word[:i]``. Requires ``word[0]`` to occur only
    once in ``word``, so a mismatch falls back to ``s1`` (on ``word[0]``) or ``s0``.
    """
    assert word.count(word[0]) == 1, "the fallback rule below needs a unique first character"
    first = _char(word[0])
    rules = [f'root ::= s0',
             f's0 ::= "" | [^{first}] s0 | "{first}" s1']
    for i in range(1, len(word)):
        c = _char(word[i])
        nxt = f' | "{c}" s{i + 1}' if i + 1 < len(word) else ""
        rules.append(f's{i} ::= "" | "{first}" s1{nxt} | [^{first}{c}] s0')
    return "\n".join(rules)


def _char(c: str) -> str:
    return "\\" + c if c in '"\\[]^-' else c

"""Bad Chat Completions requests and the error each must get (shared by the fast and slow tests)."""

from __future__ import annotations

import json
from typing import Any

USER = [{"role": "user", "content": "Hi"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def body(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": USER, "max_tokens": 4, **fields}


def escaped(model: str, **fields: Any) -> bytes:
    """The body as JSON with every non-ASCII character escaped (how a lone surrogate travels)."""
    return json.dumps(body(model, **fields), ensure_ascii=True).encode()


# (test id, raw body or a function of the model name → body, status, param, code)
CASES: list[tuple[str, Any, int, str | None, str]] = [
    ("malformed-json", b'{"model": "m", "messages": [', 400, None, "invalid_json"),
    ("not-an-object", b'[1, 2]', 400, None, "invalid_type"),
    ("empty-body", b"", 400, None, "invalid_type"),
    ("missing-messages", lambda m: {"model": m}, 400, "messages", "missing_required_parameter"),
    ("empty-messages", lambda m: body(m, messages=[]), 400, "messages", "invalid_value"),
    ("wrong-type", lambda m: body(m, temperature="hot"), 400, "temperature", "invalid_type"),
    ("string-number", lambda m: body(m, max_tokens="4"), 400, "max_tokens", "invalid_type"),
    ("temperature-5", lambda m: body(m, temperature=5), 400, "temperature", "invalid_value"),
    ("top-p-0", lambda m: body(m, top_p=0), 400, "top_p", "invalid_value"),
    ("max-tokens-0", lambda m: body(m, max_tokens=0), 400, "max_tokens", "invalid_value"),
    ("top-k-negative", lambda m: body(m, top_k=-1), 400, "top_k", "invalid_value"),
    ("five-stops", lambda m: body(m, stop=["a", "b", "c", "d", "e"]), 400, "stop", "invalid_value"),
    ("unknown-field", lambda m: body(m, foo=1), 400, "foo", "unknown_parameter"),
    ("tool-type-web-search", lambda m: body(m, tools=[TOOL, {"type": "web_search"}]), 400,
     "tools[1].type", "invalid_value"),
    ("tool-choice-unknown-function", lambda m: body(m, tools=[TOOL], tool_choice={
        "type": "function", "function": {"name": "nope"}}), 400, "tool_choice", "invalid_value"),
    ("tool-choice-without-tools", lambda m: body(m, tool_choice="required"), 400, "tool_choice",
     "invalid_value"),
    ("tool-message-unknown-call", lambda m: body(m, messages=[*USER, {"role": "tool", "tool_call_id": "call_x",
                                                                      "content": "18C"}]),
     400, "messages[1].tool_call_id", "invalid_value"),
    ("tool-schema-uncompilable", lambda m: body(m, tools=[{"type": "function", "function": {
        "name": "f", "parameters": {"type": "strin"}}}]), 400, "tools[0].function.parameters", "invalid_schema"),
    ("response-format-bad-schema", lambda m: body(m, response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "#/nope"}}}}}), 400,
     "response_format.json_schema.schema", "invalid_schema"),
    ("response-format-unknown-type", lambda m: body(m, response_format={"type": "yaml"}), 400,
     "response_format.type", "invalid_value"),
    ("functions", lambda m: body(m, functions=[{"name": "f"}]), 400, "functions", "unsupported_parameter"),
    ("n-2", lambda m: body(m, n=2), 400, "n", "unsupported_parameter"),
    ("logprobs", lambda m: body(m, logprobs=True), 400, "logprobs", "unsupported_parameter"),
    ("penalty", lambda m: body(m, presence_penalty=0.5), 400, "presence_penalty",
     "unsupported_parameter"),
    ("image", lambda m: body(m, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]),
     400, "messages[0].content", "unsupported_content"),
    ("tool-role-without-call-id", lambda m: body(m, messages=[{"role": "tool", "content": "x"}]), 400,
     "messages[0].tool_call_id", "invalid_value"),
    ("message-name", lambda m: body(m, messages=[{"role": "user", "content": "x", "name": "bob"}]),
     400, "messages[0].name", "unknown_parameter"),
    ("stream-options-without-stream", lambda m: body(m, stream_options={"include_usage": True}),
     400, "stream_options", "invalid_value"),
    ("full-text-not-bool", lambda m: body(m, fullTextEnabled="yes"), 400, "fullTextEnabled",
     "invalid_type"),
    ("unknown-model", lambda m: body("gpt-4o"), 404, "model", "model_not_found"),
    # found by fuzzing the live stack: each used to be a 500 or a null code
    ("lone-surrogate", lambda m: escaped(m, messages=[{"role": "user", "content": "a\ud800b"}]),
     400, "messages[0].content", "invalid_value"),
    ("lone-surrogate-stop", lambda m: escaped(m, stop=["\udfff"]), 400, "stop[0]", "invalid_value"),
    ("invalid-utf8", b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400,
     None, "invalid_json"),
    ("deep-json", b"[" * 100_000 + b"]" * 100_000, 400, None, "invalid_json"),
    ("deep-json-object", b'{"model": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001, 400, None,
     "invalid_json"),
]


def raw_body(case_body: Any, model: str) -> bytes | dict[str, Any]:
    """The case's body: bytes as they are, or the function's result (bytes or a JSON object)."""
    return case_body if isinstance(case_body, bytes) else case_body(model)


def post_kwargs(case_body: Any, model: str) -> dict[str, Any]:
    """httpx ``post`` keyword arguments sending the case's body (raw bytes or JSON)."""
    body = raw_body(case_body, model)
    if isinstance(body, bytes):
        return {"content": body, "headers": {"content-type": "application/json"}}
    return {"json": body}

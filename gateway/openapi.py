"""The gateway's OpenAPI document (``/openapi.json``), saying what the server really does.

FastAPI derives it from the routes and the pydantic request models; ``install_openapi`` corrects
what that derivation gets wrong here, so that a client generator or a fuzzer (tests/e2e/test_fuzz.py,
schemathesis) reads the real contract:

- errors: every ``/v1`` operation answers 4xx and 5xx with the OpenAI error body (``ErrorBody``,
  errors.py); FastAPI's 422 is never sent and is removed. ``/ready`` answers 503 with its reason.
- request bodies refuse fields they do not declare (params.py: extras are collected only to be
  refused), so they say ``additionalProperties: false``; ``model`` is the one served name.
- shapes the validators accept besides the declared type: a string ``input`` (one user message),
  string message ``content`` (Responses) and text-part lists for Chat ``content`` and a
  ``function_call_output``'s ``output``.
- a Chat message is one schema per role (as OpenAI's own document has): what each role must and
  may carry (``tool_call_id`` only and always on ``tool``, ``tool_calls`` only on ``assistant``,
  null ``content`` only beside ``tool_calls``), which one pydantic model can only check in a validator.
- streams: the create endpoints and a stored response's replay may answer ``text/event-stream``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_BODY = {
    "type": "object", "required": ["error"], "additionalProperties": False,
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"], "additionalProperties": False,
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}
READY_BODY = {"type": "object", "required": ["status", "reason"],
              "properties": {"status": {"enum": ["ready", "not_ready"]}, "reason": {"type": "string"}}}
TEXT_PARTS = {"type": "array", "items": {
    "type": "object", "required": ["type", "text"], "additionalProperties": False,
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}}
INPUT_TEXT_PARTS = {"type": "array", "items": {
    "type": "object", "required": ["type", "text"], "additionalProperties": False,
    "properties": {"type": {"const": "input_text"}, "text": {"type": "string"}}}}
# One server-sent event, as OpenAPI 3.2 spells it (``event``, ``data``, ...); a Responses event's
# data is JSON with its type and sequence number, a Chat chunk's is JSON or the final ``[DONE]``.
RESPONSE_EVENT = {"type": "object", "required": ["event", "data"], "properties": {
    "event": {"type": "string"}, "data": {
        "type": "string", "contentMediaType": "application/json", "contentSchema": {
            "type": "object", "required": ["type", "sequence_number"],
            "properties": {"type": {"type": "string"}, "sequence_number": {"type": "integer", "minimum": 0}}}}}}
CHAT_EVENT = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}
STREAMS = {("/v1/chat/completions", "post"): CHAT_EVENT,     # (path, method) → one event it streams
           ("/v1/responses", "post"): RESPONSE_EVENT,
           ("/v1/responses/{response_id}", "get"): RESPONSE_EVENT}
REQUESTS = ("ChatCompletionRequest", "ResponseCreateRequest")
# (schema, property) → the other shapes its validator accepts
ALSO_ACCEPTED: dict[tuple[str, str], dict[str, Any]] = {
    ("ResponseCreateRequest", "input"): {"type": "string"},
    ("InputMessage", "content"): {"type": "string"},
    ("Message", "content"): TEXT_PARTS,
    ("FunctionCallOutputInput", "output"): INPUT_TEXT_PARTS,
}


def install_openapi(app: FastAPI, served_model_name: str) -> None:
    """Serve the corrected document at ``/openapi.json`` (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, summary=app.summary,
                              routes=app.routes)
            correct(doc, served_model_name)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi


def correct(doc: dict[str, Any], served_model_name: str) -> None:
    schemas = doc["components"]["schemas"]
    schemas["ErrorBody"] = ERROR_BODY
    for name in REQUESTS:
        schemas[name]["additionalProperties"] = False
        schemas[name]["properties"]["model"] = {"type": "string", "enum": [served_model_name]}
    for (name, prop), other in ALSO_ACCEPTED.items():
        declared = schemas[name]["properties"][prop]
        schemas[name]["properties"][prop] = {"anyOf": [other, {k: v for k, v in declared.items()
                                                              if k != "title"}]}
    schemas["Message"] = _chat_message(schemas["Message"])
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            _responses(path, method, op["responses"])


def _chat_message(derived: dict[str, Any]) -> dict[str, Any]:
    """The Chat message schema, one variant per role (see the module's docstring)."""
    text = {"anyOf": [TEXT_PARTS, {"type": "string"}]}
    declared = derived["properties"]["tool_calls"]["anyOf"]
    calls = {"type": "array", "minItems": 1,
             "items": next(v for v in declared if v.get("type") == "array")["items"]}

    def variant(roles: list[str], required: list[str], **props: Any) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": False, "required": ["role", *required],
                "properties": {"role": {"type": "string", "enum": roles}, **props}}

    return {"description": derived.get("description", ""), "anyOf": [
        variant(["system", "developer", "user"], ["content"], content=text),
        variant(["assistant"], ["content"], content=text, tool_calls=calls),
        variant(["assistant"], ["content", "tool_calls"], content={"anyOf": [text, {"type": "null"}]},
                tool_calls=calls),
        variant(["tool"], ["content", "tool_call_id"], content=text, tool_call_id={"type": "string"}),
    ]}


def _responses(path: str, method: str, responses: dict[str, Any]) -> None:
    responses.pop("422", None)
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    if path.startswith("/v1/"):
        responses["4XX"] = {"description": "An OpenAI-style error (bad input, key, limit, id)", **error}
        responses["5XX"] = {"description": "An OpenAI-style error (no worker, a worker or the store "
                                           "failed); never a stack trace", **error}
    if path == "/ready":
        responses["503"] = {"description": "Not ready, and why",
                            "content": {"application/json": {"schema": READY_BODY}}}
        responses["200"]["content"] = {"application/json": {"schema": READY_BODY}}
    if (path, method) in STREAMS:
        responses["200"]["content"]["text/event-stream"] = {"schema": STREAMS[path, method]}

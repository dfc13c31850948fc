"""The ``Response`` object and its parts, as JSON-ready dicts (reference §1.2–1.4).

A Response echoes its request (model, instructions, sampling values in effect, limits, metadata,
previous_response_id, store, truncation, user, background, tools, tool_choice, text.format) and
carries its output items: an assistant ``message`` with one ``output_text`` part (when the model
wrote text), then one ``function_call`` item per call (and, with remote MCP tools, ``mcp_list_tools``,
``mcp_call`` and ``mcp_approval_request`` items, and a message per model turn that wrote text). ``usage`` is null until the response ends;
then it has OpenAI's counts plus Tandem's ``prefill_time`` and ``decode_time_arr`` (see usage.py).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from .models import ResponseCreateRequest
from ..usage import UsageMeter

ACTIVE = ("queued", "in_progress")          # the statuses of a response that is still running


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def new_response(response_id: str, body: ResponseCreateRequest, model: str, status: str
                 ) -> dict[str, Any]:
    """The Response as it starts (``queued`` or ``in_progress``): no output, no usage."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "background": bool(body.background),
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "max_tool_calls": body.max_tool_calls,
        "metadata": dict(body.metadata or {}),
        "model": model,
        "output": [],
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "reasoning": body.reasoning.echo() if body.reasoning else None,
        "store": body.keep,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "text": {"format": body.text.format.echo() if body.text and body.text.format else {"type": "text"}},
        "tool_choice": _tool_choice(body),
        "tools": [t.echo() for t in body.tools or ()],
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "truncation": body.truncation or "disabled",
        "usage": None,
        "user": body.user,
    }


def _tool_choice(body: ResponseCreateRequest) -> Any:
    """``tool_choice`` as in effect (``any`` is ``required``)."""
    choice = body.tool_choice
    if choice is None or isinstance(choice, str):
        return {"any": "required", None: "auto"}.get(choice, choice)
    return {"type": "function", "name": choice.name}


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    """The assistant message; ``text=None`` gives the item as first added (no content part yet)."""
    content = [] if text is None else [output_part(text)]
    return {"type": "message", "id": item_id, "role": "assistant", "status": status,
            "content": content}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def mcp_call_item(label: str, name: str, arguments: str, approval_request_id: str | None = None
                  ) -> dict[str, Any]:
    """An MCP call as it starts (``in_progress``, no output yet)."""
    return {"type": "mcp_call", "id": new_id("mcp"), "server_label": label, "name": name,
            "arguments": arguments, "output": None, "error": None, "status": "in_progress",
            "approval_request_id": approval_request_id}


def mcp_approval_request(label: str, name: str, arguments: str) -> dict[str, Any]:
    return {"type": "mcp_approval_request", "id": new_id("mcpr"), "server_label": label, "name": name,
            "arguments": arguments}


def output_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def usage_body(meter: UsageMeter, input_tokens: int) -> dict[str, Any]:
    """Responses usage from a generation's meter; ``input_tokens`` when the backend sent no totals.

    Output tokens count the prefill worker's first token; ``decode_time_arr`` has one entry per later
    token, so its length is ``output_tokens - 1`` (for a response that ended early, the tokens that
    arrived).
    """
    output_tokens = meter.output_tokens
    input_tokens = meter.prompt_tokens or input_tokens
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": meter.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
        "prefill_time": meter.prefill_time or 0.0,
        "decode_time_arr": list(meter.decode_time_arr),
    }


def finish(response: dict[str, Any], status: str, *, output: list[dict[str, Any]],
           usage: dict[str, Any] | None, error: str | None = None,
           incomplete_reason: str | None = None) -> dict[str, Any]:
    """``response`` ended with ``status`` (a new dict; the old one is left as it was)."""
    return {
        **response,
        "status": status,
        "output": output,
        "usage": usage,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": {"code": "server_error", "message": error} if error is not None else None,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
    }

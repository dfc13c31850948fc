"""A response's conversation: its input items, the prompt built from them, and their pages.

Every stored response keeps its FULL input item list: the items of the chain before it
(``previous_response_id``: the parent's input items, then the parent's output messages) followed by
its own new input. So a chain of any length is rebuilt from one record, and
``GET /v1/responses/{id}/input_items`` lists exactly what the model was given (oldest first when
``order=asc``). ``instructions`` are not items: they lead this turn's prompt as a system message and
are not inherited by the next turn (as in OpenAI).

Items are stored in OpenAI's item shapes (``ResponseInputMessageItem`` for user/system/developer,
``ResponseOutputMessage`` for the assistant), each with an id (``msg_…``) for cursor pagination.

Truncation: the prompt (through the model's chat template) plus ``max_output_tokens`` (or one token
to generate) must fit the model's context. ``disabled`` (the default) refuses a conversation that
does not fit with a 400 naming ``input``; ``auto`` drops the oldest turns until it fits. A turn is a
user message and the items after it up to the next user message; items before the first user
message (a system preamble) and the newest turn are never dropped.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable

from services.engine import InvalidRequestError

from ..auth import DEFAULT_PROJECT
from ..backend import Backend
from ..errors import APIError
from ..params import check_token_limit
from ..tools.definitions import FunctionTool
from ..tools.prompt import render
from .models import (FunctionCallInput, FunctionCallOutputInput, InputMessage, McpApprovalResponseInput,
                     ResponseCreateRequest)
from .object import ACTIVE, new_id
from .store import ResponseStore, fetch, fetch_items

# Engine field → Responses field, for refusals.
ENGINE_PARAMS = {"prompt": "input", "max_tokens": "max_output_tokens"}


async def conversation(body: ResponseCreateRequest, store: ResponseStore, backend: Backend,
                       tools: list[FunctionTool] | None = None, *, project: str = DEFAULT_PROJECT
                       ) -> tuple[list[dict[str, Any]], "Prompt"]:
    """The full input item list (history + new input) and the prompt built from it (the chat
    template runs in a worker thread; ``tools`` go into the system prompt, gateway/tools/prompt.py).
    ``previous_response_id`` must name a response of ``project`` (else 404)."""
    items = await conversation_items(body, store, project)
    return items, await turn_prompt(items, body, backend, tools)


async def conversation_items(body: ResponseCreateRequest, store: ResponseStore, project: str
                             ) -> list[dict[str, Any]]:
    """The full input item list: the parent's (``previous_response_id``) and the new input."""
    history: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        history = await _history(store, body.previous_response_id, project)
    items = history + input_items(body.input)
    check_call_outputs(items, len(history))
    return items


async def turn_prompt(items: list[dict[str, Any]], body: ResponseCreateRequest, backend: Backend,
                      tools: list[FunctionTool] | None) -> "Prompt":
    """The prompt of ``items`` (one model turn) under the request's instructions and limits."""
    max_model_len = backend.max_model_len
    check_token_limit(body.max_output_tokens, max_model_len, "max_output_tokens")
    try:
        prompt = await asyncio.to_thread(
            build_prompt, lambda messages: backend.chat_prompt(render(messages, tools or [])), items,
            body.instructions,
            max_output_tokens=body.max_output_tokens, max_model_len=max_model_len,
            truncation=body.truncation or "disabled")
    except InvalidRequestError as exc:       # the chat template refused a message
        raise APIError.invalid(exc.message, "input") from None
    return prompt


async def _history(store: ResponseStore, parent_id: str, project: str) -> list[dict[str, Any]]:
    param = "previous_response_id"
    parent = await fetch(store, parent_id, param, project)
    if parent["status"] in ACTIVE:
        raise APIError.invalid(f"Previous response '{parent_id}' is still {parent['status']}; "
                               "wait for it to finish before continuing it.", param)
    return continued_items(parent, await fetch_items(store, parent_id, param, project))


def input_items(inputs: list[InputMessage | FunctionCallInput | FunctionCallOutputInput
                             | McpApprovalResponseInput]) -> list[dict[str, Any]]:
    """The request's input as stored items, each with an id."""
    return [_stored(m) if isinstance(m, InputMessage) else _stored_tool_item(m) for m in inputs]


ID_PREFIXES = {"function_call": "fc", "function_call_output": "fco", "mcp_approval_response": "mcpa"}


def _stored_tool_item(m: FunctionCallInput | FunctionCallOutputInput | McpApprovalResponseInput
                      ) -> dict[str, Any]:
    item = m.model_dump(exclude_none=True)
    item["id"] = m.id or new_id(ID_PREFIXES[m.type])
    if m.type != "mcp_approval_response":
        item["status"] = m.status or "completed"
    return item


def check_call_outputs(items: list[dict[str, Any]], first_input: int) -> None:
    """Every ``function_call_output`` answers a ``function_call`` before it (400 naming
    ``input[i].call_id`` otherwise)."""
    calls: set[str] = set()
    for i, item in enumerate(items):
        if item.get("type") == "function_call":
            calls.add(item["call_id"])
        elif item.get("type") == "function_call_output" and item["call_id"] not in calls:
            raise APIError.invalid(f"No function_call with call_id '{item['call_id']}' comes before this "
                                   "function_call_output.", f"input[{i - first_input}].call_id")


def _stored(m: InputMessage) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "message", "id": m.id or new_id("msg"), "role": m.role,
                            "content": [part.stored() for part in m.content]}
    item["status"] = m.status or "completed"
    if m.phase is not None:
        item["phase"] = m.phase
    return item


def continued_items(parent: dict[str, Any], parent_items: list[dict[str, Any]]
                    ) -> list[dict[str, Any]]:
    """The items a child of ``parent`` inherits: the parent's input, then its output messages and
    function calls (the calls a follow-up's ``function_call_output`` items answer)."""
    kept = ("message", "function_call", "mcp_list_tools", "mcp_call", "mcp_approval_request")
    output = [item for item in parent.get("output") or [] if item.get("type") in kept]
    return [*parent_items, *output]


def chat_messages(items: list[dict[str, Any]], instructions: str | None) -> list[dict[str, Any]]:
    """Items (and this turn's instructions) as messages for gateway/tools/prompt.py; developer →
    system; function calls join the assistant turn before them, outputs are ``tool`` messages; an
    ``mcp_call`` is both (its output, or its error), and so is a declined ``mcp_approval_response``
    (the call its request asked for, and the refusal); an ``mcp_list_tools`` and an
    ``mcp_approval_request`` are not in the prompt (an approved call is its ``mcp_call``)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions is not None else []
    requests = {item["id"]: item for item in items if item.get("type") == "mcp_approval_request"}
    for item in items:
        kind = item.get("type")
        if kind == "mcp_approval_response":
            if item["approve"] or item["approval_request_id"] not in requests:
                continue
            item = _declined(requests[item["approval_request_id"]], item.get("reason"))
            kind = "mcp_call"
        if kind in ("function_call", "mcp_call"):
            if not (messages and messages[-1]["role"] == "assistant"):
                messages.append({"role": "assistant", "content": ""})
            messages[-1].setdefault("tool_calls", []).append((item["name"], item["arguments"]))
        if kind == "function_call_output":
            messages.append({"role": "tool", "content": item["output"]})
        elif kind == "mcp_call":
            messages.append({"role": "tool", "content": item.get("output") or f"Error: {error_text(item.get('error'))}"})
        elif kind in ("function_call", "mcp_list_tools", "mcp_approval_request"):
            continue
        else:
            role = "system" if item["role"] == "developer" else item["role"]
            text = "\n".join(part.get("text") or "" for part in item["content"])
            messages.append({"role": role, "content": text})
    return messages


def error_text(error: Any) -> str:
    """An ``mcp_call.error`` as text: its message, or its tool's text content."""
    if isinstance(error, dict):
        return error.get("message") or "\n".join(p.get("text", "") for p in error.get("content") or ())
    return str(error)


def _declined(request: dict[str, Any], reason: str | None) -> dict[str, Any]:
    """A declined approval as the model reads it: the call, and an error saying it was not run."""
    why = f": {reason}" if reason else "."
    return {"name": request["name"], "arguments": request["arguments"],
            "error": f"The user declined this call{why}"}


@dataclass(frozen=True)
class Prompt:
    token_ids: list[int]
    dropped_items: int        # how many of the oldest items truncation left out


def build_prompt(template: Callable[[list[dict[str, str]]], list[int]],
                 items: list[dict[str, Any]], instructions: str | None, *,
                 max_output_tokens: int | None, max_model_len: int, truncation: str) -> Prompt:
    """Token ids of the conversation, dropping the oldest turns if ``truncation`` is ``auto``."""
    budget = max_model_len - (max_output_tokens or 1)
    preamble, starts = _turns(items)

    def tokens(dropped: int) -> list[int]:
        return template(chat_messages(items[:preamble] + items[preamble + dropped:], instructions))

    prompt = tokens(0)
    if len(prompt) <= budget:
        return Prompt(prompt, 0)
    if truncation != "auto" or not starts:
        raise _too_long(len(prompt), max_output_tokens, max_model_len, truncation)
    # Drop whole turns: the fewest that make it fit (bisection; the prompt shrinks as turns go).
    cuts = [start - preamble for start in starts]     # items dropped when that turn leads
    lo, hi, best = 0, len(cuts), None
    while lo < hi:
        mid = (lo + hi) // 2
        candidate = tokens(cuts[mid])
        if len(candidate) <= budget:
            best, hi = candidate, mid
        else:
            lo, prompt = mid + 1, candidate
    if best is None:
        raise _too_long(len(prompt), max_output_tokens, max_model_len, truncation)
    return Prompt(best, cuts[lo])


def _turns(items: list[dict[str, Any]]) -> tuple[int, list[int]]:
    """(end of the preamble, index of every user message after the first).

    Making the turn at ``starts[k]`` the first one after the preamble drops every turn before it;
    the newest turn's start is the last entry, so it is never dropped.
    """
    users = [i for i, item in enumerate(items) if item.get("role") == "user"]
    if not users:
        return len(items), []
    return users[0], users[1:]


def _too_long(prompt_tokens: int, max_output_tokens: int | None, max_model_len: int,
              truncation: str) -> APIError:
    wanted = f" + max_output_tokens {max_output_tokens}" if max_output_tokens else ""
    hint = (" Shorten the input, lower max_output_tokens, or set truncation to 'auto'."
            if truncation != "auto" else " Even the newest turn alone does not fit.")
    return APIError.invalid(f"The conversation has {prompt_tokens} tokens{wanted}, more than this "
                            f"model's context of {max_model_len} tokens allows.{hint}", "input",
                            code="context_length_exceeded")


def page(items: list[dict[str, Any]], *, after: str | None, limit: int, order: str
         ) -> dict[str, Any]:
    """One page of ``items`` as an OpenAI list object (cursor: ``after`` an item id)."""
    ordered = items if order == "asc" else items[::-1]
    start = 0
    if after is not None:
        ids = [item.get("id") for item in ordered]
        if after not in ids:
            raise APIError.invalid(f"No input item with id '{after}' in this response.", "after")
        start = ids.index(after) + 1
    data = ordered[start:start + limit]
    return {"object": "list", "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": start + limit < len(ordered)}

"""Remote MCP tools through the disaggregated path: a real MCP server on loopback (the ``mcp`` SDK's
server API, tests/gateway/mcp_server.py), the session's ``tandem up`` (real prefill and decode
processes, the real model, real Redis) and the official SDK as the client."""

from __future__ import annotations

import json

import pytest
import redis

from tests.gateway.mcp_server import LoopbackMcpServer

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"
SECRET = "Bearer sk-e2e-mcp-secret-42"
STREAM_ORDER = [
    "response.created", "response.in_progress",
    "response.output_item.added", "response.mcp_list_tools.in_progress",
    "response.mcp_list_tools.completed", "response.output_item.done",
    "response.output_item.added", "response.mcp_call_arguments.delta", "response.mcp_call_arguments.done",
    "response.mcp_call.in_progress", "response.mcp_call.completed", "response.output_item.done",
    "response.output_item.added", "response.content_part.added", "response.output_text.delta",
    "response.output_text.done", "response.content_part.done", "response.output_item.done",
    "response.completed"]


@pytest.fixture(scope="module")
def mcp_server():
    with LoopbackMcpServer() as server:
        yield server


def request(server, **extra):
    """``add`` forced on the first turn, one call at most (so the second turn answers in text)."""
    tool = {"type": "mcp", "server_label": "calc", "server_url": server.url, "require_approval": "never",
            "allowed_tools": ["add", "explode"], "headers": {"Authorization": SECRET}}
    return {"model": MODEL, "input": "What is 2 + 3? Use the add tool.", "tools": [tool],
            "tool_choice": {"type": "function", "name": "add"}, "max_tool_calls": 1, "parallel_tool_calls": False,
            "temperature": 0, "max_output_tokens": 60, **extra}


def check_output(response, server):
    listing, call, message = response.output
    assert listing.type == "mcp_list_tools" and [t.name for t in listing.tools] == ["add", "explode"]
    assert call.type == "mcp_call" and call.name == "add" and call.error is None
    args = json.loads(call.arguments)
    assert server.seen == [("add", args)] and call.output == str(args["a"] + args["b"])
    assert message.type == "message" and response.output_text
    assert server.headers.get("authorization") == SECRET


def test_a_forced_call_runs_on_the_server_and_the_model_answers(stack, mcp_server):
    mcp_server.clear()
    response = stack.client().responses.create(**request(mcp_server))
    assert response.status == "completed", response.model_dump_json(indent=1)
    check_output(response, mcp_server)
    usage = response.usage.model_dump()
    # two turns, each with its first token from the prefill worker: the rest are decode timings
    assert usage["output_tokens"] == len(usage["decode_time_arr"]) + 2
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["prefill_time"] > 0


def test_streamed_in_the_reference_order(stack, mcp_server):
    mcp_server.clear()
    with stack.client().responses.stream(**request(mcp_server)) as stream:
        events = list(stream)
        final = stream.get_final_response()
    collapsed = [e.type for i, e in enumerate(events)
                 if not (i and e.type.endswith(".delta") and events[i - 1].type == e.type)]
    assert collapsed == STREAM_ORDER
    assert [e.sequence_number for e in events] == list(range(len(events)))
    check_output(final, mcp_server)


def test_headers_are_never_stored_or_echoed(stack, mcp_server):
    mcp_server.clear()
    client = stack.client()
    response = client.responses.create(**request(mcp_server, stream=False))
    with client.responses.stream(**request(mcp_server)) as stream:      # an event log too
        streamed = stream.get_final_response()
    for r in (response, streamed):
        assert "sk-e2e-mcp-secret" not in client.responses.retrieve(r.id).model_dump_json()
        assert r.tools[0].headers is None
    db = redis.Redis.from_url(stack.redis_url, socket_timeout=5)
    keys = list(db.scan_iter(count=1000))
    assert any(response.id.encode() in k for k in keys)               # the scan sees the records
    for key in keys:
        assert b"sk-e2e-mcp-secret" not in b"".join(values(db, key)), key


def values(db: redis.Redis, key: bytes) -> list[bytes]:
    """Every byte string stored under ``key``, whatever its type."""
    kind = db.type(key).decode()
    if kind == "string":
        return [db.get(key) or b""]
    if kind == "hash":
        return [b for kv in db.hgetall(key).items() for b in kv]
    if kind == "list":
        return db.lrange(key, 0, -1)
    if kind == "set":
        return list(db.smembers(key))
    if kind == "zset":
        return db.zrange(key, 0, -1)
    if kind == "stream":
        return [b for _, fields in db.xrange(key) for kv in fields.items() for b in kv]
    return []

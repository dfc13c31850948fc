"""Remote MCP responses streamed (reference §3 event order, across turns), replayed, run in the
background, stopped by a client that goes away; approvals; the SSE transport. A scripted backend,
a real Redis, real MCP servers on loopback (tests/gateway/mcp_server.py), the openai SDK."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from .fakes import words
from .mcp_server import LoopbackMcpServer
from gateway.tools.mcp import McpSettings

from .responses_support import MODEL, assert_error, gateway, sse_events, wait_until
from .test_responses_mcp import call, mcp_tool, turns


@pytest.fixture(scope="module")
def mcp_server():
    with LoopbackMcpServer() as server:
        yield server


LISTING = ["response.output_item.added", "response.mcp_list_tools.in_progress",
           "response.mcp_list_tools.completed", "response.output_item.done"]
CALL = ["response.output_item.added", "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done", "response.mcp_call.in_progress",
        "response.mcp_call.completed", "response.output_item.done"]
MESSAGE = ["response.output_item.added", "response.content_part.added", "response.output_text.delta",
           "response.output_text.done", "response.content_part.done", "response.output_item.done"]


def kinds(events):
    """Event types with runs of deltas collapsed to one."""
    out = []
    for e in events:
        if not (out and out[-1] == e["type"] and e["type"].endswith(".delta")):
            out.append(e["type"])
    return out


def body(url, **extra):
    return {"model": MODEL, "input": "What is 2 + 3?", "tools": [mcp_tool(url)], **extra}


def check_items(events):
    """Every item event names an added item; the final output is the done items in index order."""
    added = {e["output_index"]: e["item"]["id"] for e in events if e["type"] == "response.output_item.added"}
    assert sorted(added) == list(range(len(added)))
    for e in events:
        if "item_id" in e:
            assert added[e["output_index"]] == e["item_id"]
    done = {e["output_index"]: e["item"] for e in events if e["type"] == "response.output_item.done"}
    assert events[-1]["response"]["output"] == [done[i] for i in sorted(done)]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_streamed_events_in_the_reference_order(http, fake, mcp_server):
    mcp_server.clear()
    fake.script = turns(words(call("add", {"a": 2, "b": 3})), words("It ", "is 5."))
    with http.stream("POST", "/v1/responses", json=body(mcp_server.url, stream=True, tool_choice="required")) as r:
        r.read()
    events = sse_events(r)
    assert kinds(events) == ["response.created", "response.in_progress", *LISTING, *CALL, *MESSAGE,
                             "response.completed"]
    check_items(events)
    final = events[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["mcp_list_tools", "mcp_call", "message"]
    assert final["output"][1]["output"] == "5" and final["output"][1]["status"] == "completed"
    assert final["usage"]["output_tokens"] == 1 + 2            # both turns
    assert mcp_server.seen == [("add", {"a": 2, "b": 3})]
    stored = http.get(f"/v1/responses/{final['id']}").json()
    assert stored["output"] == final["output"]


def test_the_sdk_streams_it_to_the_end_and_replays_it(client, fake, mcp_server):
    fake.script = turns(words(call("add", {"a": 2, "b": 3})), words("Five."))
    with client.responses.stream(**body(mcp_server.url, tool_choice="required")) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [o.type for o in final.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert final.output[1].output == "5" and final.output_text == "Five."
    replay = list(client.responses.retrieve(final.id, stream=True, starting_after=3))
    assert [(e.type, e.sequence_number) for e in replay] == [(e.type, e.sequence_number) for e in events[4:]]
    assert [o.id for o in replay[-1].response.output] == [o.id for o in final.output]


def test_background_mcp_response(client, fake, mcp_server):
    fake.script = turns(words(call("add", {"a": 1, "b": 1})), words("Two."))
    r = client.responses.create(**body(mcp_server.url, background=True, tool_choice="required"))
    assert r.status in ("queued", "in_progress") and r.output == []
    assert wait_until(lambda: client.responses.retrieve(r.id).status == "completed", 10)
    done = client.responses.retrieve(r.id)
    assert [o.type for o in done.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert done.output[1].output == "2"


def test_a_failed_listing_when_streaming(http, fake, mcp_server):
    with http.stream("POST", "/v1/responses", json=body("http://127.0.0.1:1/mcp", stream=True)) as r:
        r.read()
    events = sse_events(r)
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.mcp_list_tools.in_progress", "response.mcp_list_tools.failed",
        "response.output_item.done", "response.failed"]
    assert "calc" in events[-2]["item"]["error"] and fake.params == []
    assert "calc" in events[-1]["response"]["error"]["message"]
    fake.script = turns(words("Fine."))
    assert http.post("/v1/responses", json=body(mcp_server.url)).status_code == 200


def test_a_client_that_goes_away_stops_the_loop(http, fake, mcp_server, store):
    mcp_server.clear()
    fake.script = turns(words(call("slow", {"seconds": 1.5})), words("never"))
    tool = mcp_tool(mcp_server.url, allowed_tools=["slow"])
    request = {"model": MODEL, "input": "Wait.", "tools": [tool], "stream": True, "tool_choice": "required"}
    with http.stream("POST", "/v1/responses", json=request) as r:
        for line in r.iter_lines():
            if "response.mcp_call.in_progress" in line:
                assert wait_until(lambda: mcp_server.seen, 5)      # the call is running on the server
                break
        response_id = "resp_" + r.headers["x-request-id"].removeprefix("req_")
    assert wait_until(lambda: (store.get(response_id) or {}).get("status") == "cancelled", 5)
    time.sleep(1.8)                                  # past the tool's end: no next turn, no call
    assert len(fake.params) == 1 and mcp_server.seen == [("slow", {"seconds": 1.5})]
    fake.script = turns(words("Fine."))
    assert http.post("/v1/responses", json=body(mcp_server.url)).status_code == 200


def test_a_cancelled_background_mcp_response_stops(client, fake, mcp_server, store):
    mcp_server.clear()
    fake.script = turns(words(call("slow", {"seconds": 1.5})), words("never"))
    tool = mcp_tool(mcp_server.url, allowed_tools=["slow"])
    r = client.responses.create(model=MODEL, input="Wait.", tools=[tool], tool_choice="required",
                                background=True)
    assert wait_until(lambda: mcp_server.seen, 5)
    assert client.responses.cancel(r.id).status == "cancelled"
    time.sleep(1.8)
    assert len(fake.params) == 1 and client.responses.retrieve(r.id).status == "cancelled"
    kinds = [e["type"] for e in store.events_after(r.id, -1)]
    assert kinds[-1] == "response.mcp_call.in_progress"         # logged up to the call, no end


def test_a_call_past_its_deadline_is_an_error_item(fake, store):
    with LoopbackMcpServer() as server, gateway(fake, store, mcp=McpSettings(call_timeout_s=0.5)) as url:
        fake.script = turns(words(call("slow", {"seconds": 3})), words("Too slow."))
        tool = mcp_tool(server.url, allowed_tools=["slow"])
        r = httpx.post(f"{url}/v1/responses", json={"model": MODEL, "input": "Wait.", "tools": [tool],
                                                    "tool_choice": "required"}, timeout=10)
        assert server.finished == []                 # answered before the tool would have ended
        failed = r.json()["output"][1]
        assert failed["status"] == "failed" and "within 0.5 s" in failed["error"]["message"]
        assert failed["error"]["type"] == "mcp_protocol_error" and failed["error"]["code"] == -32001
        assert r.json()["status"] == "completed" and r.json()["output"][2]["type"] == "message"


# -- approvals ---------------------------------------------------------------------------------------
def ask(client, fake, server, then=(), **tool):
    fake.script = turns(words(call("add", {"a": 2, "b": 3})), *then)
    spec = {**mcp_tool(server.url), **tool}
    if "require_approval" not in tool:
        del spec["require_approval"]                 # OpenAI's default: always
    return client.responses.create(model=MODEL, input="What is 2 + 3?", tools=[spec],
                                   tool_choice="required"), spec


def test_an_approval_request_then_approve(client, fake, mcp_server):
    mcp_server.clear()
    first, tool = ask(client, fake, mcp_server)
    assert [o.type for o in first.output] == ["mcp_list_tools", "mcp_approval_request"]
    request = first.output[1]
    assert request.name == "add" and json.loads(request.arguments) == {"a": 2, "b": 3}
    assert mcp_server.seen == [] and mcp_server.listings == 1
    fake.script = turns(words("It is 5."))
    second = client.responses.create(model=MODEL, previous_response_id=first.id, tools=[tool], input=[
        {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True}])
    assert [o.type for o in second.output] == ["mcp_call", "message"]       # listing reused
    assert second.output[0].approval_request_id == request.id and second.output[0].output == "5"
    assert mcp_server.seen == [("add", {"a": 2, "b": 3})] and mcp_server.listings == 1, mcp_server.methods
    assert second.output_text == "It is 5."
    assert fake.prompts[-1][-1] == {"role": "user", "content": "<tool_response>5</tool_response>"}
    items = client.responses.input_items.list(second.id, order="asc").data
    assert items[-1].type == "mcp_approval_response"


def test_a_streamed_approval_request(http, fake, mcp_server):
    fake.script = turns(words(call("add", {"a": 2, "b": 3})))
    tool = {**mcp_tool(mcp_server.url), "require_approval": "always"}
    request = {"model": MODEL, "input": "2 + 3?", "tools": [tool], "stream": True, "tool_choice": "required"}
    with http.stream("POST", "/v1/responses", json=request) as r:
        r.read()
    events = sse_events(r)
    assert kinds(events) == ["response.created", "response.in_progress", *LISTING,
                             "response.output_item.added", "response.output_item.done", "response.completed"]
    check_items(events)
    assert json.loads(events[-2]["item"]["arguments"]) == {"a": 2, "b": 3}


def test_an_approval_request_then_decline(client, fake, mcp_server):
    mcp_server.clear()
    first, tool = ask(client, fake, mcp_server, require_approval="always")
    fake.script = turns(words("I will not add them."))
    second = client.responses.create(model=MODEL, previous_response_id=first.id, tools=[tool], input=[
        {"type": "mcp_approval_response", "approval_request_id": first.output[1].id, "approve": False,
         "reason": "not now"}])
    assert [o.type for o in second.output] == ["message"] and mcp_server.seen == []
    assert "declined" in fake.prompts[-1][-1]["content"] and "not now" in fake.prompts[-1][-1]["content"]


@pytest.mark.parametrize("rule, asks", [({"never": {"tool_names": ["add"]}}, False),
                                        ({"always": {"tool_names": ["add"]}}, True),
                                        ({"never": {"tool_names": ["explode"]}}, True)])
def test_approval_per_tool(client, fake, mcp_server, rule, asks):
    response, _ = ask(client, fake, mcp_server, then=[words("5")], require_approval=rule)
    assert (response.output[1].type == "mcp_approval_request") is asks


def test_bad_approval_responses_are_400(http, client, fake, mcp_server):
    first, tool = ask(client, fake, mcp_server)
    answer = {"type": "mcp_approval_response", "approval_request_id": "mcpr_nope", "approve": True}
    r = http.post("/v1/responses", json={"model": MODEL, "previous_response_id": first.id,
                                         "tools": [tool], "input": [answer]})
    assert_error(r, 400, "input[0].approval_request_id")
    answer["approval_request_id"] = first.output[1].id
    r = http.post("/v1/responses", json={"model": MODEL, "previous_response_id": first.id, "input": [answer]})
    assert_error(r, 400, "tools")
    fake.script = turns(words("5"))
    r = http.post("/v1/responses", json={"model": MODEL, "previous_response_id": first.id,
                                         "tools": [tool], "input": [answer]})
    assert r.status_code == 200, r.text
    r = http.post("/v1/responses", json={"model": MODEL, "previous_response_id": r.json()["id"],
                                         "tools": [tool], "input": [answer]})
    assert_error(r, 400, "input[0].approval_request_id")                     # already answered


def test_a_server_that_speaks_only_sse(client, fake):
    with LoopbackMcpServer("sse") as server:
        fake.script = turns(words(call("add", {"a": 4, "b": 5})), words("9"))
        response = client.responses.create(**body(server.url, tool_choice="required"))
        assert [o.type for o in response.output] == ["mcp_list_tools", "mcp_call", "message"]
        assert response.output[1].output == "9" and server.seen == [("add", {"a": 4, "b": 5})]
        assert server.headers.get("authorization") == mcp_tool(server.url)["headers"]["Authorization"]

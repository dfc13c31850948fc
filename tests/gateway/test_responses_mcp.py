"""Remote MCP tools in the Responses API over a scripted backend, a real Redis and a real MCP
server on loopback (tests/gateway/mcp_server.py): listing, calls, failures, safety. Streaming,
background and approvals: test_responses_mcp_stream.py."""

from __future__ import annotations

import json

import pytest

from .fakes import words
from .mcp_server import LoopbackMcpServer
from .responses_support import MODEL, NAMESPACE, assert_error

SECRET = "Bearer sk-mcp-secret-123"


@pytest.fixture(scope="module")
def mcp_server():
    with LoopbackMcpServer() as server:
        yield server


def mcp_tool(url, **extra):
    return {"type": "mcp", "server_label": "calc", "server_url": url, "require_approval": "never",
            "allowed_tools": ["add", "explode"], "headers": {"Authorization": SECRET}, **extra}


def call(name, arguments):
    return f'<tool_call>[{{"name": "{name}", "arguments": {json.dumps(arguments)}}}]</tool_call>'


def turns(*scripts):
    """A script that plays ``scripts[k]`` on the k-th generation."""
    played = []

    async def script(params):
        played.append(params.request_id)
        async for chunk in scripts[len(played) - 1](params):
            yield chunk
    return script


def create(http, url, **body):
    return http.post("/v1/responses", json={"model": MODEL, "input": "What is 2 + 3?",
                                            "tools": [mcp_tool(url)], **body})


def test_list_call_answer(http, fake, mcp_server, store):
    mcp_server.seen.clear()
    fake.script = turns(words(call("add", {"a": 2, "b": 3})), words("It is 5."))
    r = create(http, mcp_server.url, tool_choice="required")
    assert r.status_code == 200, r.text
    body = r.json()
    listing, mcp_call, message = body["output"]
    assert listing["type"] == "mcp_list_tools" and listing["server_label"] == "calc"
    assert [t["name"] for t in listing["tools"]] == ["add", "explode"]        # allowed_tools only
    assert mcp_call["type"] == "mcp_call" and mcp_call["output"] == "5" and mcp_call["error"] is None
    assert json.loads(mcp_call["arguments"]) == {"a": 2, "b": 3}
    assert message["content"][0]["text"] == "It is 5."
    assert mcp_server.seen == [("add", {"a": 2, "b": 3})]
    assert mcp_server.headers.get("authorization") == SECRET                    # used for the call
    assert fake.params[0].sampling.grammar.tool_mode == "required"
    assert fake.params[1].sampling.grammar.tool_mode == "auto"
    assert fake.prompts[-1][-1] == {"role": "user", "content": "<tool_response>5</tool_response>"}
    usage = body["usage"]
    assert usage["output_tokens"] == 2 and len(usage["decode_time_arr"]) == 0
    assert body["tools"][0]["headers"] is None and body["reasoning"] is None
    retrieved = http.get(f"/v1/responses/{body['id']}").json()
    assert retrieved["output"] == body["output"] and SECRET not in json.dumps(retrieved)
    for key in store.client.scan_iter(f"{NAMESPACE}:*"):
        if store.client.type(key) == b"string":
            assert b"sk-mcp-secret" not in store.client.get(key)


def test_a_failing_tool_is_an_error_item(http, fake, mcp_server):
    fake.script = turns(words(call("explode", {"reason": "x"})), words("Sorry."))
    body = create(http, mcp_server.url).json()
    failed = body["output"][1]
    assert failed["type"] == "mcp_call" and failed["status"] == "failed" and failed["output"] is None
    error = failed["error"]                           # the openai SDK's McpToolExecutionError
    assert error["type"] == "mcp_tool_execution_error" and "explode" in error["content"][0]["text"]
    assert body["status"] == "completed" and body["output"][2]["content"][0]["text"] == "Sorry."
    assert error["content"][0]["text"] in fake.prompts[-1][-1]["content"]      # the model read it


def test_max_tool_calls_and_the_turn_limit(http, fake, mcp_server):
    fake.script = turns(*[words(call("add", {"a": 1, "b": 1}))] * 2, words("Done."))
    body = create(http, mcp_server.url, max_tool_calls=1).json()
    assert [i["type"] for i in body["output"]] == ["mcp_list_tools", "mcp_call", "message"]
    assert body["max_tool_calls"] == 1
    assert fake.params[-1].sampling.grammar is None or fake.params[-1].sampling.grammar.tool_mode == "none"


def test_unreachable_server_is_424_and_serving_goes_on(http, fake, mcp_server):
    assert_error(create(http, "http://127.0.0.1:1/mcp"), 424, "tools[0]", "mcp_list_tools_failed")
    fake.script = turns(words("Fine."))
    assert create(http, mcp_server.url).status_code == 200


def test_errors_name_the_tool_by_its_index_in_tools(http, fake):
    function = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    r = http.post("/v1/responses", json={"model": MODEL, "input": "Hi", "tools": [
        function, mcp_tool("http://127.0.0.1:1/mcp")]})
    assert_error(r, 424, "tools[1]", "mcp_list_tools_failed")


@pytest.mark.parametrize("url", ["http://example.com/mcp", "http://169.254.169.254/latest",
                                 "file:///etc/passwd", "http://[fe80::1]/mcp"])
def test_disallowed_urls_are_400(http, fake, url):
    assert_error(create(http, url), 400, "tools[0].server_url", "invalid_value")
    assert fake.params == []


def test_the_server_description_reaches_the_model(http, fake, mcp_server):
    fake.script = turns(words("No tool needed."))
    tool = mcp_tool(mcp_server.url, server_description="A calculator for sums.")
    r = http.post("/v1/responses", json={"model": MODEL, "input": "Hi", "tools": [tool]})
    assert r.status_code == 200, r.text
    system = fake.prompts[-1][0]["content"]
    assert "A calculator for sums." in system and "server calc" in system

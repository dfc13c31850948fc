"""The Responses API over a scripted backend (no model) and a real Redis: creating responses,
their shapes, usage and stream events, and the errors of bad requests."""

from __future__ import annotations

import json

import httpx
import pytest

from tandem.redis_server import EmbeddedRedis

from .fakes import endless, fail_after, leaked, refuse, words
from .responses_support import (SyncStore, MODEL, NAMESPACE, TTL_S, assert_error, assert_usage, check_stream, create, gateway, reset, sse_events, stored_id, wait_until)





# -- create -----------------------------------------------------------------------------------------
def test_create_with_string_input_shape_usage_and_record(client, fake, store):
    raw = client.responses.with_raw_response.create(model=MODEL, input="Hi", temperature=0.5,
                                                    metadata={"k": "v"}, user="u-1")
    r = raw.parse()
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert r.output_text == "Hello world!" and r.model == MODEL
    msg = r.output[0]
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert msg.status == "completed" and msg.content[0].annotations == []
    assert r.temperature == 0.5 and r.top_p == 1.0 and r.metadata == {"k": "v"} and r.user == "u-1"
    assert r.store is True and r.background is False and r.truncation == "disabled"
    assert r.tools == [] and r.tool_choice == "auto" and r.parallel_tool_calls is True
    assert r.completed_at is not None and r.error is None and r.incomplete_details is None
    assert_usage(json.loads(raw.http_response.text)["usage"], 3)
    assert not [h for h in raw.headers if h.startswith("x-tandem")]   # TANDEM_DEBUG_HEADERS off
    assert fake.prompts[-1] == [{"role": "user", "content": "Hi"}]
    assert fake.params[-1].sampling.temperature == 0.5 and fake.params[-1].request_id == r.id
    assert store.get(r.id) == json.loads(raw.http_response.text)
    assert 0 < store.ttl(r.id) <= TTL_S


def test_item_input_roles_parts_and_instructions(client, fake, store):
    r = client.responses.create(model=MODEL, instructions="Be brief.", input=[
        {"role": "developer", "content": "Talk like a pirate."},
        {"role": "user", "content": [{"type": "input_text", "text": "Hello"},
                                     {"type": "input_text", "text": "there"}]},
        {"type": "message", "id": "msg_prior", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "Arr.", "annotations": []}]},
        {"type": "message", "role": "user", "content": "Again"}])
    assert r.status == "completed" and r.instructions == "Be brief."
    assert fake.prompts[-1] == [
        {"role": "system", "content": "Be brief."}, {"role": "system", "content": "Talk like a pirate."},
        {"role": "user", "content": "Hello\nthere"}, {"role": "assistant", "content": "Arr."},
        {"role": "user", "content": "Again"}]
    items = store.input_items(r.id)        # instructions are not an item
    assert [i["role"] for i in items] == ["developer", "user", "assistant", "user"]
    assert items[2]["id"] == "msg_prior" and all(i["id"].startswith("msg_") for i in items)
    assert items[0]["content"] == [{"type": "input_text", "text": "Talk like a pirate."}]


def test_max_output_tokens_hit_is_incomplete(client, fake):
    fake.script = words("a", "b", finish="length")
    r = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].status == "incomplete" and r.output_text == "ab" and r.completed_at is None
    assert fake.params[-1].sampling.max_tokens == 2 and r.max_output_tokens == 2


def test_tandem_sampling_extensions_are_honoured(client, fake):
    client.responses.create(model=MODEL, input="Hi", top_p=0.5,
                            extra_body={"top_k": 7, "seed": 3, "ignore_eos": True})
    s = fake.params[-1].sampling
    assert (s.top_p, s.top_k, s.seed, s.ignore_eos, s.temperature) == (0.5, 7, 3, True, 1.0)


# -- streaming --------------------------------------------------------------------------------------
def test_raw_stream_event_order_completed(http, fake, store):
    with http.stream("POST", "/v1/responses", json={"model": MODEL, "input": "Hi", "stream": True}) as r:
        r.read()
    assert r.headers["content-type"].startswith("text/event-stream") and "[DONE]" not in r.text
    events = sse_events(r)
    final = check_stream(events, "response.completed", deltas=3)
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == "Hello world!"
    assert_usage(final["usage"], 3)
    assert store.get(final["id"]) == final                 # saved before the terminal event
    assert store.events_after(final["id"], -1) == events   # and every event logged


def test_raw_stream_event_order_incomplete(http, fake):
    fake.script = words("a", "b", finish="length")
    with http.stream("POST", "/v1/responses", json={"model": MODEL, "input": "Hi", "stream": True,
                                                     "max_output_tokens": 2}) as r:
        r.read()
    final = check_stream(sse_events(r), "response.incomplete", deltas=2)
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete"


def test_sdk_stream_helper_and_raw_iterator(client, fake):
    with client.responses.stream(model=MODEL, input="Hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "Hello world!" and final.status == "completed"
    kinds = [e.type for e in client.responses.create(model=MODEL, input="Hi", stream=True)]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"


def test_worker_failure_mid_stream_ends_with_response_failed(http, fake, store):
    fake.script = fail_after("Hel", "lo")
    with http.stream("POST", "/v1/responses", json={"model": MODEL, "input": "Hi", "stream": True}) as r:
        r.read()
    events = sse_events(r)
    final = check_stream(events, "response.failed", deltas=2)
    assert final["status"] == "failed" and final["error"]["code"] == "server_error"
    assert "worker failed" in final["error"]["message"] and not leaked(r.text)
    assert events[-2]["item"]["status"] == "incomplete"
    assert store.get(final["id"])["status"] == "failed"
    assert final["usage"]["output_tokens"] == 2 and final["usage"]["input_tokens"] > 0   # so far
    assert not leaked(json.dumps(store.get(final["id"])))
    assert wait_until(lambda: len(fake.closed) == 1)


def test_sdk_helper_raises_on_failed_stream(client, fake):
    fake.script = fail_after("Hel")
    with pytest.raises(Exception):
        with client.responses.stream(model=MODEL, input="Hi") as stream:
            stream.get_final_response()


def test_disconnect_mid_stream_aborts_and_records_cancelled(base_url, fake, store):
    fake.script = endless(0.01)
    with httpx.stream("POST", f"{base_url}/v1/responses", timeout=10,
                      json={"model": MODEL, "input": "Hi", "stream": True}) as r:
        rid = stored_id(r)
        for line in r.iter_lines():
            if "output_text.delta" in line:
                break
    assert wait_until(lambda: len(fake.closed) == 1)
    assert wait_until(lambda: store.get(rid)["status"] == "cancelled")


def test_disconnect_mid_completion_aborts_and_records_cancelled(base_url, fake, store):
    fake.script = endless(0.01)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base_url}/v1/responses", json={"model": MODEL, "input": "Hi"}, timeout=0.5)
    assert wait_until(lambda: len(fake.closed) == 1)
    [params] = fake.params
    assert wait_until(lambda: store.get(params.request_id)["status"] == "cancelled")


def test_store_lost_mid_stream_ends_in_response_failed(tmp_path, backend):
    fake = reset(backend)
    fake.script = words(*"abcdef", delay=0.1)
    with EmbeddedRedis(tmp_path / "redis") as server, \
            gateway(backend, SyncStore(server.url, socket_timeout=0.5)) as url:
        with httpx.stream("POST", f"{url}/v1/responses", timeout=10,
                          json={"model": MODEL, "input": "Hi", "stream": True}) as r:
            lines = []
            for line in r.iter_lines():
                lines.append(line)
                if "output_text.delta" in line and server.running:
                    server.stop()
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert events[-1]["type"] == "response.failed" and "error" not in events[-1]
    assert "store" in events[-1]["response"]["error"]["message"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert wait_until(lambda: len(fake.closed) == 1)


# -- failures before the first token store nothing --------------------------------------------------
def test_refusal_before_first_token_is_http_error_and_stores_nothing(http, fake, store):
    fake.script = refuse("max_tokens", "too many")
    r = create(http, max_output_tokens=5)
    assert_error(r, 400, "max_output_tokens")
    assert store.get(stored_id(r)) is None


def test_worker_failure_mid_completion_is_502_and_recorded_failed(http, fake, store):
    fake.script = fail_after("Hel")
    r = create(http)
    assert_error(r, 502, None, "worker_error")
    assert store.get(stored_id(r))["status"] == "failed"



# -- store: false, metadata, bad input --------------------------------------------------------------
def test_store_false_writes_nothing(http, fake, store):
    keys = set(store.client.scan_iter(f"{NAMESPACE}:*"))
    r = create(http, store=False)
    assert r.status_code == 200 and r.json()["store"] is False
    with http.stream("POST", "/v1/responses", json={"model": MODEL, "input": "Hi", "store": False,
                                                     "stream": True}) as s:
        s.read()
    assert sse_events(s)[-1]["type"] == "response.completed"
    assert set(store.client.scan_iter(f"{NAMESPACE}:*")) == keys
    assert_error(http.get(f"/v1/responses/{r.json()['id']}"), 404, "response_id")


IMAGE = [{"role": "user", "content": [{"type": "input_text", "text": "What is this?"},
                                      {"type": "input_image", "image_url": "https://x/cat.png",
                                       "detail": "auto"}]}]
BAD = [
    ("unknown-field", {"foo": 1}, "foo", "unknown_parameter"),
    ("tool-type", {"tools": [{"type": "function", "name": "f", "parameters": None, "strict": None},
                             {"type": "web_search"}]}, "tools[1].type", "invalid_value"),
    ("tool-choice-unknown", {"tools": [{"type": "function", "name": "f", "parameters": None, "strict": None}],
                             "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice", "invalid_value"),
    ("tool-schema", {"tools": [{"type": "function", "name": "f", "parameters": {"type": "strin"}, "strict": True}]},
     "tools[0].parameters", "invalid_schema"),
    ("format-schema", {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "strin"}}}},
     "text.format.schema", "invalid_schema"),
    ("format-without-schema", {"text": {"format": {"type": "json_schema", "name": "x"}}},
     "text.format.schema", "invalid_value"),
    ("output-unknown-call", {"input": [{"role": "user", "content": "hi"}, {
        "type": "function_call_output", "call_id": "call_x", "output": "18C"}]}, "input[1].call_id", "invalid_value"),
    ("include", {"include": ["message.output_text.logprobs"]}, "include", "unsupported_parameter"),
    ("image", {"input": IMAGE}, "input[0].content", "unsupported_content"),
    ("file", {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content", "unsupported_content"),
    ("reasoning-effort", {"reasoning": {"effort": "extreme"}}, "reasoning.effort", "invalid_value"),
    ("reasoning-summary", {"reasoning": {"effort": "low", "summary": "auto"}}, "reasoning.summary",
     "unsupported_value"),
    ("reasoning-generate-summary", {"reasoning": {"generate_summary": "concise"}},
     "reasoning.generate_summary", "unsupported_value"),
    ("reasoning-unknown", {"reasoning": {"budget": 3}}, "reasoning.budget", "unknown_parameter"),
    ("reasoning-item", {"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input[0]",
     "unsupported_item"),
    ("input-text-annotations", {"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "hi", "annotations": []}]}]},
     "input[0].content[0].annotations", "unknown_parameter"),
    ("input-text-logprobs", {"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "hi", "logprobs": []}]}]},
     "input[0].content[0].logprobs", "unknown_parameter"),
    ("tool-role", {"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "invalid_value"),
    ("empty-input", {"input": []}, "input", "invalid_value"),
    ("missing-input", {"input": None}, "input", None),
    ("temperature", {"temperature": 3}, "temperature", "invalid_value"),
    ("top-p", {"top_p": 0}, "top_p", "invalid_value"),
    ("max-output-0", {"max_output_tokens": 0}, "max_output_tokens", "invalid_value"),
    ("max-output-huge", {"max_output_tokens": 9000}, "max_output_tokens", "invalid_value"),
    ("truncation", {"truncation": "sometimes"}, "truncation", "invalid_value"),
    ("metadata-17", {"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "invalid_value"),
    ("metadata-key", {"metadata": {"k" * 65: "v"}}, "metadata", "invalid_value"),
    ("metadata-value", {"metadata": {"k": "v" * 513}}, "metadata", "invalid_value"),
    ("metadata-number", {"metadata": {"k": 1}}, "metadata.k", "invalid_type"),
    ("background-no-store", {"background": True, "store": False}, "background", "invalid_value"),
    ("stream-options", {"stream_options": {"include_obfuscation": False}}, "stream_options",
     "invalid_value"),
    ("obfuscation", {"stream": True, "stream_options": {"include_obfuscation": True}},
     "stream_options.include_obfuscation", None),
    ("string-number", {"max_output_tokens": "5"}, "max_output_tokens", "invalid_type"),
]


@pytest.mark.parametrize("body, param, code", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_400_naming_the_field(http, fake, body, param, code):
    assert_error(create(http, **body), 400, param, code)
    assert create(http).status_code == 200              # still serving


def test_reasoning_effort_is_echoed_and_changes_nothing(client, fake):
    r = client.responses.create(model=MODEL, input="Hi", reasoning={"effort": "low"})
    assert r.reasoning.effort == "low" and r.reasoning.summary is None
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    assert client.responses.retrieve(r.id).reasoning.effort == "low"
    assert client.responses.create(model=MODEL, input="Hi").reasoning is None


def test_unknown_model_and_template_refusal(http, fake):
    assert_error(http.post("/v1/responses", json={"model": "gpt-4o", "input": "Hi"}), 404, "model",
                 "model_not_found")
    assert_error(create(http, input="REFUSE"), 400, "input")
    assert_error(http.post("/v1/responses", content=b"{", headers={"content-type": "application/json"}),
                 400, None, "invalid_json")




@pytest.mark.parametrize("body, param", [
    ({"input": "a\ud800"}, "input[0].content[0].text"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "\udfff"}]}]},
     "input[0].content[0].text"),
    ({"metadata": {"k": "v\ud800"}}, "metadata.k"),
    ({"instructions": "\ud800"}, "instructions"),
])
def test_a_lone_surrogate_is_400_naming_the_field_and_stores_nothing(http, fake, store, body, param):
    keys = set(store.client.scan_iter(f"{NAMESPACE}:*"))
    payload = json.dumps({"model": MODEL, "input": "Hi", **body}, ensure_ascii=True).encode()
    r = http.post("/v1/responses", content=payload, headers={"content-type": "application/json"})
    assert_error(r, 400, param, "invalid_value")
    assert fake.params == [] and set(store.client.scan_iter(f"{NAMESPACE}:*")) == keys

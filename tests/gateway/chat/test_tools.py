"""Chat Completions tools and structured output over a scripted backend (no model): the grammar
the gateway asks for, the prompt it renders, and the shapes of calls, streamed and not, as the
official SDK reads them."""

from __future__ import annotations

import json

import openai
import pytest

from gateway.app import create_app
from gateway.config import GatewaySettings
from tests.gateway.fakes import FakeBackend, words
from tests.gateway.serving import serve

MODEL = "tandem-test"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"}}, "required": ["city"]}}}
CALL_PIECES = ("<tool", "_call>[{\"name\": \"get_", "weather\", \"argu", "ments\": {\"city\": ",
               "\"Paris\"}}, {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}]</tool_call>")
HI = [{"role": "user", "content": "Weather in Paris and Rome?"}]


@pytest.fixture(scope="module")
def backend():
    return FakeBackend()


@pytest.fixture(scope="module")
def client(backend):
    with serve(create_app(backend, GatewaySettings(served_model_name=MODEL))) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)


@pytest.fixture
def fake(backend):
    backend.reset()
    return backend


def test_calls_come_back_as_tool_calls(client, fake):
    fake.script = words("Let me check. ", *CALL_PIECES)
    out = client.chat.completions.create(model=MODEL, messages=HI, tools=[WEATHER], tool_choice="auto")
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check. "
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_weather"]
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]
    assert all(c.id.startswith("call_") and c.type == "function" for c in calls) and calls[0].id != calls[1].id
    grammar = fake.params[0].sampling.grammar
    assert grammar.kind == "tool_calls" and grammar.tool_mode == "auto" and grammar.parallel
    system = fake.prompts[0][0]
    assert system["role"] == "system" and "<tools>" in system["content"] and "get_weather" in system["content"]


def test_streamed_calls_send_the_whole_name_once_then_argument_pieces(client, fake):
    fake.script = words(*CALL_PIECES)
    chunks = list(client.chat.completions.create(model=MODEL, messages=HI, tools=[WEATHER], stream=True,
                                                 tool_choice="required"))
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    firsts = [d for d in deltas if d.id]
    assert [(d.index, d.function.name, d.type) for d in firsts] == [(0, "get_weather", "function"),
                                                                   (1, "get_weather", "function")]
    assert all(d.function.name is None and d.id is None for d in deltas if d not in firsts)
    for i, city in enumerate(["Paris", "Rome"]):
        args = "".join(d.function.arguments or "" for d in deltas if d.index == i)
        assert json.loads(args) == {"city": city}
    assert all(not (c.choices and c.choices[0].delta.content) for c in chunks)   # no tag in content
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert fake.params[0].sampling.grammar.tool_mode == "required"


def test_the_sdk_stream_helper_accumulates_the_calls(client, fake):
    fake.script = words(*CALL_PIECES)
    with client.chat.completions.stream(model=MODEL, messages=HI, tools=[WEATHER]) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [json.loads(c.function.arguments)["city"] for c in calls] == ["Paris", "Rome"]
    assert [c.function.name for c in calls] == ["get_weather"] * 2


@pytest.mark.parametrize("choice, mode, names", [
    ("none", "none", ("get_weather", "f")), ("any", "required", ("get_weather", "f")),
    ({"type": "function", "function": {"name": "f"}}, "required", ("f",))])
def test_tool_choice_becomes_the_grammar(client, fake, choice, mode, names):
    tools = [WEATHER, {"type": "function", "function": {"name": "f"}}]
    client.chat.completions.create(model=MODEL, messages=HI, tools=tools, tool_choice=choice,
                                   parallel_tool_calls=False)
    grammar = fake.params[0].sampling.grammar
    assert grammar.tool_mode == mode and tuple(t.name for t in grammar.tools) == names and not grammar.parallel


def test_tool_results_are_rendered_as_tool_responses(client, fake):
    history = [*HI, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"}]
    out = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER])
    assert out.choices[0].message.content == "Hello world!" and out.choices[0].finish_reason == "stop"
    rendered = fake.prompts[0]
    assert rendered[2] == {"role": "assistant", "content":
                           '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call>'}
    assert rendered[3] == {"role": "user", "content": "<tool_response>18C</tool_response>"}


def test_json_schema_and_json_object_formats_become_grammars(client, fake):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
              "additionalProperties": False}
    client.chat.completions.create(model=MODEL, messages=HI, response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}})
    client.chat.completions.create(model=MODEL, messages=HI, response_format={"type": "json_object"})
    first, second = (p.sampling.grammar for p in fake.params)
    assert first.kind == "json_schema" and json.loads(first.schema) == schema
    assert second.kind == "json_object"


def test_a_cut_short_call_reports_length(client, fake):
    fake.script = words(*CALL_PIECES[:3], finish="length")
    out = client.chat.completions.create(model=MODEL, messages=HI, tools=[WEATHER], tool_choice="required")
    assert out.choices[0].finish_reason == "length" and "<tool" not in (out.choices[0].message.content or "")


def test_a_grammar_ending_says_why_in_stop_reason(client, fake):
    fake.script = words('{"city": ', finish="grammar")
    fmt = {"type": "json_object"}
    out = client.chat.completions.create(model=MODEL, messages=HI, response_format=fmt)
    choice = out.choices[0]
    assert choice.finish_reason == "length" and choice.model_extra["stop_reason"] == "grammar"
    fake.script = words("ok", finish="stop")
    plain = client.chat.completions.create(model=MODEL, messages=HI)
    assert "stop_reason" not in (plain.choices[0].model_extra or {})
    fake.script = words('{"city": ', finish="grammar")
    last = list(client.chat.completions.create(model=MODEL, messages=HI, response_format=fmt,
                                               stream=True))[-1].choices[0]
    assert last.finish_reason == "length" and last.model_extra["stop_reason"] == "grammar"

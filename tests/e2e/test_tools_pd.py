"""Function calling and structured output through the disaggregated path: the real model, real
prefill and decode processes, and the official SDK as the client."""

from __future__ import annotations

import json
from enum import Enum

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"
WEATHER_PARAMS = {"type": "object", "properties": {
    "city": {"type": "string", "description": "The city, e.g. Paris"},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"],
    "additionalProperties": False}
TIME_PARAMS = {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"],
               "additionalProperties": False}
CHAT_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                                "parameters": WEATHER_PARAMS}},
              {"type": "function", "function": {"name": "get_time", "description": "Current time in a timezone",
                                                "parameters": TIME_PARAMS}}]
PARAMS = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}
ASK = [{"role": "user", "content": "What is the weather in Paris and in Rome, in celsius?"}]


def valid_calls(calls) -> list:
    assert calls
    for c in calls:
        assert c.type == "function" and c.id.startswith("call_")
        jsonschema.validate(json.loads(c.function.arguments), PARAMS[c.function.name])
    return calls


def test_required_calls_are_valid_and_cross_pd(stack):
    raw = stack.client().chat.completions.with_raw_response.create(
        model=MODEL, messages=ASK, tools=CHAT_TOOLS, tool_choice="required", temperature=0, max_tokens=120)
    out = raw.parse()
    assert out.choices[0].finish_reason == "tool_calls"
    valid_calls(out.choices[0].message.tool_calls)
    assert raw.headers["x-tandem-prefill-pid"] != raw.headers["x-tandem-decode-pid"]
    assert int(raw.headers["x-tandem-kv-bytes"]) > 0
    assert out.usage.completion_tokens == len(out.usage.model_extra["decode_time_arr"]) + 1


def test_streamed_required_calls_follow_the_delta_shape(stack):
    client = stack.client()
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, tools=CHAT_TOOLS, tool_choice="any",
                                                 temperature=0, max_tokens=120, stream=True))
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert all((d.id is None) == (d.function.name is None) for d in deltas)   # id and name come together
    named = [d.index for d in deltas if d.function.name]
    assert named == sorted(set(named))                                       # once per call, in order
    with client.chat.completions.stream(model=MODEL, messages=ASK, tools=CHAT_TOOLS, tool_choice="required",
                                        temperature=0, max_tokens=120) as stream:
        final = stream.get_final_completion()
    calls = valid_calls(final.choices[0].message.tool_calls)
    assert len(calls) == len(named)


def test_named_none_auto_and_single_call(stack):
    client = stack.client()
    named = client.chat.completions.create(model=MODEL, messages=ASK, tools=CHAT_TOOLS, temperature=0, max_tokens=80,
                                           tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert {c.function.name for c in valid_calls(named.choices[0].message.tool_calls)} == {"get_time"}
    none = client.chat.completions.create(model=MODEL, messages=ASK, tools=CHAT_TOOLS, tool_choice="none",
                                          temperature=0, max_tokens=60)
    assert none.choices[0].message.tool_calls is None and "<tool_call>" not in none.choices[0].message.content
    auto = client.chat.completions.create(model=MODEL, messages=ASK, tools=CHAT_TOOLS, temperature=0, max_tokens=120)
    message = auto.choices[0].message
    assert message.tool_calls is None or valid_calls(message.tool_calls)
    assert "<tool_call>" not in (message.content or "")
    single = client.chat.completions.create(model=MODEL, messages=ASK, tools=CHAT_TOOLS, tool_choice="required",
                                            parallel_tool_calls=False, temperature=0, max_tokens=80)
    assert len(valid_calls(single.choices[0].message.tool_calls)) == 1


# SmolLM2-135M asked cold for two cities closes the array after one call (the grammar allows more:
# tests/services/engine/test_constrained.py); after one earlier exchange in which two calls were
# made, it makes one call per city — the history a real agent conversation carries.
EARLIER = [{"role": "user", "content": "What is the weather in London and in Berlin, in fahrenheit?"},
           {"role": "assistant", "content": None, "tool_calls": [
               {"id": "call_a", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "London", "unit": "fahrenheit"}'}},
               {"id": "call_b", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Berlin", "unit": "fahrenheit"}'}}]},
           {"role": "tool", "tool_call_id": "call_a", "content": '{"temperature": 50}'},
           {"role": "tool", "tool_call_id": "call_b", "content": '{"temperature": 45}'},
           {"role": "assistant", "content": "London is 50F and Berlin is 45F."}]


def test_two_cities_give_two_calls_when_parallel(stack):
    client = stack.client()
    out = client.chat.completions.create(model=MODEL, messages=EARLIER + ASK, tools=CHAT_TOOLS[:1],
                                         tool_choice="required", temperature=0, max_tokens=160)
    calls = valid_calls(out.choices[0].message.tool_calls)
    assert [json.loads(c.function.arguments)["city"] for c in calls] == ["Paris", "Rome"]
    assert len({c.id for c in calls}) == 2
    with client.chat.completions.stream(model=MODEL, messages=EARLIER + ASK, tools=CHAT_TOOLS[:1],
                                        tool_choice="required", temperature=0, max_tokens=160) as stream:
        final = stream.get_final_completion()
    assert [c.function.arguments for c in final.choices[0].message.tool_calls] == [c.function.arguments for c in calls]
    single = client.chat.completions.create(model=MODEL, messages=EARLIER + ASK, tools=CHAT_TOOLS[:1],
                                            tool_choice="required", parallel_tool_calls=False, temperature=0,
                                            max_tokens=160)
    assert len(valid_calls(single.choices[0].message.tool_calls)) == 1


RESPONSES_WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
                     "parameters": WEATHER_PARAMS, "strict": True}


def test_responses_round_trip_through_previous_response_id(stack):
    client = stack.client()
    with client.responses.stream(model=MODEL, input="What is the weather in Paris?", tools=[RESPONSES_WEATHER],
                                 tool_choice="required", temperature=0, max_output_tokens=80) as stream:
        first = stream.get_final_response()
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.status == "completed" and call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER_PARAMS)
    second = client.responses.create(model=MODEL, previous_response_id=first.id, tools=[RESPONSES_WEATHER],
                                     temperature=0, max_output_tokens=60, input=[
                                         {"type": "function_call_output", "call_id": call.call_id,
                                          "output": json.dumps({"temperature_c": 18, "sky": "sunny"})}])
    assert second.status in ("completed", "incomplete") and second.output_text.strip()
    items = client.responses.input_items.list(second.id, order="asc").data
    assert [i.type for i in items] == ["message", "function_call", "function_call_output"]


def test_responses_stream_two_calls_with_their_own_output_indices(stack):
    earlier = [{"type": "message", "role": "user", "content": EARLIER[0]["content"]}]
    for c in EARLIER[1]["tool_calls"]:
        earlier.append({"type": "function_call", "call_id": c["id"], "name": "get_weather",
                        "arguments": c["function"]["arguments"]})
    earlier += [{"type": "function_call_output", "call_id": m["tool_call_id"], "output": m["content"]}
                for m in EARLIER[2:4]]
    earlier += [{"type": "message", "role": "assistant", "content": EARLIER[4]["content"]},
                {"type": "message", "role": "user", "content": ASK[0]["content"]}]
    with stack.client().responses.stream(model=MODEL, input=earlier, tools=[RESPONSES_WEATHER],
                                         tool_choice="required", temperature=0, max_output_tokens=160) as stream:
        events = list(stream)
        final = stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert [json.loads(c.arguments)["city"] for c in calls] == ["Paris", "Rome"]
    added = [e.output_index for e in events if e.type == "response.output_item.added"]
    done = [e.output_index for e in events if e.type == "response.function_call_arguments.done"]
    assert added == done == [0, 1]


class Unit(str, Enum):
    celsius = "celsius"
    fahrenheit = "fahrenheit"


class Reading(BaseModel):    # bounded strings and lists: a 135M model may otherwise ramble in one
    city: str = Field(max_length=20)
    unit: Unit
    high: int = Field(ge=-50, le=60)


class Forecast(BaseModel):
    summary: str = Field(max_length=80)
    readings: list[Reading] = Field(min_length=1, max_length=3)


def test_parse_helpers_return_valid_objects(stack):
    client = stack.client()
    out = client.responses.parse(model=MODEL, input="Give a short weather forecast for Paris and Rome.",
                                 text_format=Forecast, temperature=0, max_output_tokens=300)
    assert isinstance(out.output_parsed, Forecast) and out.text.format.type == "json_schema"
    chat = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "Forecast for Oslo."}],
                                         response_format=Forecast, temperature=0, max_tokens=300)
    assert isinstance(chat.choices[0].message.parsed, Forecast)
    obj = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content":
                                         'Give a JSON object with the keys "name" and "age" of a person.'}],
                                         response_format={"type": "json_object"}, temperature=0, max_tokens=120)
    assert isinstance(json.loads(obj.choices[0].message.content), dict)


def test_bad_inputs_get_400_and_the_service_keeps_serving(stack):
    client = stack.client()
    bad = [dict(tools=[{"type": "web_search"}]),
           dict(tools=CHAT_TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}),
           dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}),
           dict(messages=[*ASK, {"role": "tool", "tool_call_id": "call_zzz", "content": "1"}])]
    for kw in bad:
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=MODEL, **{"messages": ASK, "max_tokens": 4, **kw})
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=MODEL, input=[{"type": "function_call_output", "call_id": "c9", "output": "x"}])
    assert err.value.body["param"] == "input[0].call_id"
    assert client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4).choices[0].message.content

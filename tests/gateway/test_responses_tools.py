"""Responses API function tools and structured output over a scripted backend and a real Redis:
function_call items and their events, the round trip through previous_response_id, parse()."""

from __future__ import annotations

import json
from enum import Enum

from pydantic import BaseModel

from .fakes import words
from .responses_support import MODEL, create, sse_events

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}
CALL = ("<tool_call>[{\"name\": \"get_weather\", ", "\"arguments\": {\"city\": ", "\"Paris\"}}]</tool_call>")


def test_a_call_streams_in_the_reference_order(http, fake):
    fake.script = words(*CALL)
    r = http.post("/v1/responses", json={"model": MODEL, "input": "Weather in Paris?", "tools": [WEATHER],
                                         "tool_choice": "required", "stream": True})
    events = sse_events(r)
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done",
                          "response.completed"]
    assert set(kinds[3:-3]) == {"response.function_call_arguments.delta"}
    added, done = events[2]["item"], events[-2]["item"]
    assert added["arguments"] == "" and added["status"] == "in_progress" and added["name"] == "get_weather"
    assert done["status"] == "completed" and json.loads(done["arguments"]) == {"city": "Paris"}
    assert (done["id"], done["call_id"]) == (added["id"], added["call_id"]) and done["call_id"].startswith("call_")
    assert "".join(e["delta"] for e in events if e["type"].endswith("arguments.delta")) == done["arguments"]
    assert fake.params[0].sampling.grammar.tool_mode == "required"


def test_text_then_a_call_keeps_the_output_indices_straight(client, fake):
    fake.script = words("Checking. ", *CALL)
    with client.responses.stream(model=MODEL, input="Weather in Paris?", tools=[WEATHER]) as stream:
        final = stream.get_final_response()
    assert [item.type for item in final.output] == ["message", "function_call"]
    assert final.output[0].content[0].text == "Checking. " and final.output[1].name == "get_weather"
    assert final.tools[0].name == "get_weather" and final.tool_choice == "auto"


def test_round_trip_through_previous_response_id(client, fake):
    fake.script = words(*CALL)
    first = client.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER])
    [call] = first.output
    assert call.type == "function_call" and call.status == "completed"
    fake.script = words("It is 18C in Paris.")
    second = client.responses.create(model=MODEL, previous_response_id=first.id, tools=[WEATHER], input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": "18C"}])
    assert second.output_text == "It is 18C in Paris."
    prompt = fake.prompts[-1]
    assert '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call>' in prompt[-2]["content"]
    assert prompt[-1] == {"role": "user", "content": "<tool_response>18C</tool_response>"}
    items = client.responses.input_items.list(second.id, order="asc").data
    assert [i.type for i in items] == ["message", "function_call", "function_call_output"]
    assert items[1].call_id == items[2].call_id == call.call_id


class Unit(str, Enum):
    celsius = "celsius"
    fahrenheit = "fahrenheit"


class Reading(BaseModel):
    city: str
    unit: Unit
    temps: list[int]


class Report(BaseModel):
    title: str
    readings: list[Reading]


def test_parse_sends_a_schema_and_reads_the_json_back(client, fake):
    answer = {"title": "t", "readings": [{"city": "Paris", "unit": "celsius", "temps": [1, 2]}]}
    fake.script = words(json.dumps(answer))
    out = client.responses.parse(model=MODEL, input="Report", text_format=Report)
    assert out.output_parsed == Report.model_validate(answer)
    grammar = fake.params[0].sampling.grammar
    assert grammar.kind == "json_schema" and json.loads(grammar.schema)["properties"]["readings"]
    assert out.text.format.type == "json_schema" and out.text.format.name == "Report"


def test_json_object_format_is_echoed(http, fake):
    fake.script = words('{"a": 1}')
    r = create(http, text={"format": {"type": "json_object"}}).json()
    assert r["text"] == {"format": {"type": "json_object"}} and json.loads(r["output"][0]["content"][0]["text"])
    assert fake.params[0].sampling.grammar.kind == "json_object"


def test_a_grammar_ending_is_incomplete_with_reason_grammar(http, fake):
    fake.script = words('{"a": ', finish="grammar")
    r = create(http, text={"format": {"type": "json_object"}}).json()
    assert r["status"] == "incomplete" and r["incomplete_details"] == {"reason": "grammar"}
    events = sse_events(create(http, stream=True, text={"format": {"type": "json_object"}}))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "grammar"}

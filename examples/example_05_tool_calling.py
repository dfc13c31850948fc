"""05: function calling: the model calls a tool, we run it, and send the result back with
function_call_output (continuing the conversation with previous_response_id)."""

import json

from _client import MODEL, client

TOOLS = [{"type": "function", "name": "get_weather",
          "description": "Current weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}}]


def get_weather(city: str) -> dict:
    return {"city": city, "temperature_c": 21, "sky": "sunny"}


api = client()
first = api.responses.create(model=MODEL, input="What is the weather in Paris?", tools=TOOLS,
                             tool_choice="required", temperature=0, max_output_tokens=60)
call = next(item for item in first.output if item.type == "function_call")
print(f"model called {call.name}({call.arguments})")
result = get_weather(**json.loads(call.arguments))
second = api.responses.create(
    model=MODEL, previous_response_id=first.id, tools=TOOLS, temperature=0, max_output_tokens=40,
    input=[{"type": "function_call_output", "call_id": call.call_id, "output": json.dumps(result)}])
print("answer:", second.output_text)

"""07: the Empower-style streaming tool-call loop (Chat Completions): each call's name arrives
whole in one delta, then its arguments in pieces; the index tells parallel calls apart."""

import json

from _client import MODEL, client

TOOLS = [{"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather in a given location",
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["location"]}}}]

stream = client().chat.completions.create(
    model=MODEL, messages=[{"role": "user", "content": "What's the weather in San Francisco in Celsius?"}],
    tools=TOOLS, tool_choice="required", temperature=0, max_tokens=80, stream=True)
functions = []
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.tool_calls:
        call = chunk.choices[0].delta.tool_calls[0]
        if call.function.name:                       # the name comes whole, once
            functions.append({"index": call.index, "name": call.function.name, "arguments": ""})
        else:
            functions[call.index]["arguments"] += call.function.arguments
for f in functions:
    print(f["name"], json.loads(f["arguments"]))

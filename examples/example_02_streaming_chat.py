"""02: a streamed response; prints the text as it arrives, and the event types seen."""

from _client import MODEL, client

seen = []
stream = client().responses.create(model=MODEL, input="Name three colors.", temperature=0,
                                   max_output_tokens=30, stream=True)
for event in stream:
    if event.type not in seen:
        seen.append(event.type)
    if event.type == "response.output_text.delta":
        print(event.delta, end="", flush=True)
    elif event.type == "response.completed":
        print(f"\n[completed: {event.response.usage.output_tokens} output tokens]")
print("events:", ", ".join(seen))

"""01: one Responses API request, not streamed."""

from _client import MODEL, client

response = client().responses.create(model=MODEL, input="What is the capital of France?",
                                      temperature=0, max_output_tokens=30)
print(response.output_text)
print(f"[{response.usage.input_tokens} input, {response.usage.output_tokens} output tokens; "
      f"status {response.status}]")

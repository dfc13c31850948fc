"""03: a conversation continued with previous_response_id (the server keeps the history).

Later turns reuse the KV of the earlier ones: usage.input_tokens_details.cached_tokens counts the
prompt tokens that were not computed again.
"""

from _client import MODEL, client

api = client()
first = api.responses.create(model=MODEL, input="My name is Ada. Please remember it.",
                             temperature=0, max_output_tokens=30)
print("turn 1:", first.output_text)
second = api.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id,
                              temperature=0, max_output_tokens=20)
print("turn 2:", second.output_text)
print(f"[turn 2: {second.usage.input_tokens} input tokens, "
      f"{second.usage.input_tokens_details.cached_tokens} of them from the cache]")

"""06: Chat Completions with the MindIE-style fields: prefill_time, decode_time_arr, and
fullTextEnabled (each streamed chunk also carries the whole text so far)."""

from _client import MODEL, client

api = client()
r = api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                                temperature=0, max_tokens=12)
usage = r.usage.model_extra
print(r.choices[0].message.content)
print(f"[prefill_time {usage['prefill_time']:.3f} s, {len(usage['decode_time_arr'])} decode "
      f"timings for {r.usage.completion_tokens} tokens]")
stream = api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Count to five."}],
                                     temperature=0, max_tokens=16, stream=True,
                                     extra_body={"fullTextEnabled": True})
last = ""
for chunk in stream:
    last = (chunk.model_extra or {}).get("full_text", last)
print("full_text of the last chunk:", last)

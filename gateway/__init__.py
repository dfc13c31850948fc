"""The stateless HTTP gateway: OpenAI-compatible endpoints in front of prefill and decode workers."""

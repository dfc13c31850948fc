"""Token counts and MindIE-style timings of one request, measured where the client sees them.

``prefill_time`` is the seconds from the request's arrival at the gateway to the arrival of its
first token (made by the prefill worker). ``decode_time_arr`` has one entry per later token: the
seconds since the token before it arrived, so its length is ``completion_tokens - 1``. Both use
``TokenChunk.arrival`` (``time.perf_counter()`` in this process). ``cached_tokens`` are the prompt
tokens whose KV came from the prefill side's prefix cache instead of being computed (Chat:
``usage.prompt_tokens_details.cached_tokens``; Responses: ``input_tokens_details``).

A request that failed or was cut off has usage too, of what it made so far: the completion
tokens that arrived, and the prompt length it was built with, unless a final chunk said otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .backend import TokenChunk


@dataclass
class UsageMeter:
    arrival: float
    prefill_time: float | None = None
    decode_time_arr: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    _last: float | None = None

    def record(self, chunk: TokenChunk) -> None:
        """Time every token in ``chunk``; take the totals from the final chunk."""
        for _ in chunk.token_ids:
            if self._last is None:
                self.prefill_time = chunk.arrival - self.arrival
            else:
                self.decode_time_arr.append(chunk.arrival - self._last)
            self._last = chunk.arrival
        if chunk.finished:
            self.prompt_tokens = chunk.prompt_tokens or self.prompt_tokens
            self.cached_tokens = chunk.cached_tokens
            self.completion_tokens = chunk.completion_tokens

    @property
    def output_tokens(self) -> int:
        """The completion tokens: the final chunk's count, else those that arrived."""
        return self.completion_tokens or (self.prefill_time is not None) + len(self.decode_time_arr)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.prompt_tokens + self.output_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "prefill_time": self.prefill_time or 0.0,
            "decode_time_arr": list(self.decode_time_arr),
        }

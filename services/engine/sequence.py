"""A request inside the engine: its tokens, sampling parameters, KV blocks and timings.

Ownership: a ``Sequence`` holds a reference to each KV block listed in ``block_table`` from the
moment it is allocated (by the scheduler, found in the prefix cache, or by ``LLMEngine.reserve_kv``
for a sequence awaiting its KV) until the sequence finishes, is aborted, or is preempted; the
scheduler drops those references at each of those three points and nowhere else. Blocks shared
with other sequences are full and never written.
"""

from __future__ import annotations

import enum
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidRequestError
from .grammar import GrammarSpec


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples and when it stops.

    ``temperature == 0`` is greedy. ``top_k == 0`` disables top-k. ``seed`` makes sampling
    reproducible: token *i* is drawn from a generator seeded by ``(seed, i)``, so the same seed gives
    the same output whichever process samples which token. ``max_tokens=None`` means up to the
    context length.
    """

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    grammar: GrammarSpec | None = None   # constrained decoding (services/engine/grammar.py)

    def validate(self) -> None:
        """Raise ``InvalidRequestError`` naming the first out-of-range field."""
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens <= 0):
            raise InvalidRequestError("max_tokens", f"max_tokens must be a positive integer, got {self.max_tokens}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidRequestError("temperature", f"temperature must be >= 0, got {self.temperature}")
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise InvalidRequestError("top_p", f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidRequestError("top_k", f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InvalidRequestError("stop", "stop strings must be non-empty strings")
        if self.seed is not None and not isinstance(self.seed, int):
            raise InvalidRequestError("seed", "seed must be an integer")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class SequenceStatus(enum.Enum):
    WAITING = "waiting"          # queued for the scheduler
    RUNNING = "running"          # scheduled every step
    AWAITING_KV = "awaiting_kv"  # decode worker: adopted with its first token, not scheduled until
                                 # its prompt KV is imported (prefill-side copies are "held KV")
    AWAITING_GRAMMAR = "awaiting_grammar"  # not scheduled until its grammar is compiled (the
                                           # engine holds it; it may own reserved blocks)
    FINISHED = "finished"


@dataclass
class Sequence:
    """One request's state. ``num_computed_tokens`` counts tokens whose KV is in the cache."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    max_tokens: int
    arrival_time: float = field(default_factory=time.perf_counter)
    output_token_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None
    seed: int = field(default_factory=lambda: random.getrandbits(62))
    first_token_time: float | None = None
    last_token_time: float | None = None
    decode_times: list[float] = field(default_factory=list)
    num_preemptions: int = 0
    prefill_only: bool = False   # prefill worker: hold the KV after the first token instead of decoding
    grammar: Any = None          # a constrained request's RequestGrammar (services/engine/constrained.py)
    num_cached_tokens: int = 0   # prompt tokens whose KV came from the prefix cache at first admission
    block_hashes: list[bytes] = field(default_factory=list)   # prefix-cache keys of its first full blocks
    queued_time: float | None = None      # joined the scheduler's queue (None: at arrival)
    scheduled_time: float | None = None   # first given tokens by a step

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    def token_at(self, start: int, end: int) -> list[int]:
        """Tokens ``[start, end)`` of prompt + output, without concatenating the two."""
        n = len(self.prompt_token_ids)
        if end <= n:
            return self.prompt_token_ids[start:end]
        if start >= n:
            return self.output_token_ids[start - n:end - n]
        return self.prompt_token_ids[start:] + self.output_token_ids[:end - n]

    def record_token(self, token_id: int, now: float) -> None:
        """Append a sampled token and its timing (first token → prefill_time, later → decode_times)."""
        if self.first_token_time is None:
            self.first_token_time = now
        else:
            self.decode_times.append(now - self.last_token_time)
        self.last_token_time = now
        self.output_token_ids.append(token_id)

    @property
    def prefill_time(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    def timings(self) -> "RequestTimings":
        return RequestTimings(self.arrival_time, self.queued_time or self.arrival_time,
                              self.scheduled_time, self.first_token_time, self.last_token_time)


@dataclass(frozen=True)
class RequestTimings:
    """When a request passed each stage here (``time.perf_counter()``), for the worker's metrics.

    ``queued`` is when it joined the scheduler's queue (on a decode worker: when its KV was
    imported); ``scheduled`` when a step first gave it tokens (None: never scheduled here).
    """

    arrival: float
    queued: float
    scheduled: float | None
    first_token: float | None
    last_token: float | None


@dataclass(frozen=True)
class RequestOutput:
    """What one engine step produced for one request.

    ``text`` is the new text since the last output (stop strings removed). On the finishing output,
    ``finish_reason`` is ``stop``, ``length``, ``abort``, ``grammar`` (a constrained request
    whose grammar failed to compile or refused a token: it ends there, the refused token's text is
    never emitted) or ``error`` (an engine step failed; ``error`` says how) and the totals are final.
    """

    request_id: str
    new_token_ids: list[int]
    text: str
    finished: bool
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    prefill_time: float | None
    decode_time_arr: list[float]
    kv_held: bool = False   # prefill-only request: first token made, KV held for handoff
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache, not computed
    timings: RequestTimings | None = None   # on the finishing (or KV-held) output only
    error: str = ""         # with finish_reason ``error``: what failed

"""What requests ask for: random-length word prompts or the shipped chat prompts.

The client has no tokenizer, so ``random`` prompts are built from real words (the vocabulary of
the shipped prompt set, short lowercase words, mostly one token each) and sized with a
``Calibration``: the server's prompt tokens as a line in the number of words, fitted from two probe
requests. The sizes are estimates; the server's ``usage.prompt_tokens`` is what the report counts.
As in ``vllm bench serve``, ``input_len`` is the prompt text's tokens; the chat template adds
``Calibration.overhead`` more.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Iterator

import numpy as np

from .config import WorkloadConfig

PROBE_SHORT_WORDS = 8


@dataclass(frozen=True)
class WorkloadRequest:
    """One chat request: a single user message and its ``max_tokens``.

    ``prompt_len`` is the estimated tokens of ``prompt`` (random dataset), ``None`` if unknown.
    """

    prompt: str
    max_tokens: int
    prompt_len: int | None = None


@dataclass(frozen=True)
class Calibration:
    """The server counts ``overhead + tokens_per_word * words`` prompt tokens for a prompt of words."""

    tokens_per_word: float = 1.0
    overhead: float = 0.0
    measured: bool = False

    @classmethod
    def fit(cls, short: tuple[int, int], long: tuple[int, int]) -> "Calibration":
        """From two ``(words, prompt_tokens)`` probes."""
        (w1, p1), (w2, p2) = short, long
        if w2 <= w1 or p2 <= p1:
            raise ValueError(f"calibration probes do not grow: {short} then {long}")
        slope = (p2 - p1) / (w2 - w1)
        return cls(tokens_per_word=slope, overhead=p1 - slope * w1, measured=True)

    def words_for(self, tokens: int) -> int:
        return max(1, round(tokens / self.tokens_per_word))


def probe_word_counts(config: WorkloadConfig) -> tuple[int, int]:
    """Word counts of the two calibration probes: short, and about the longest prompt (64..1024)."""
    longest = int(config.input_len * (1 + config.range_ratio))
    return PROBE_SHORT_WORDS, min(max(longest, 64), 1024)


def random_words(n: int, rng: np.random.Generator) -> str:
    vocab = vocabulary()
    words = [vocab[i] for i in rng.integers(0, len(vocab), size=n)]
    return " ".join(words).capitalize() + "."


def requests(config: WorkloadConfig, calibration: Calibration,
             rng: np.random.Generator) -> Iterator[WorkloadRequest]:
    """The endless request stream of ``config``, drawn from ``rng``."""
    if config.dataset == "random":
        return _random_requests(config, calibration, rng)
    return _chat_requests(config, rng)


def _random_requests(config: WorkloadConfig, calibration: Calibration,
                     rng: np.random.Generator) -> Iterator[WorkloadRequest]:
    while True:
        prompt_len = _uniform_len(config.input_len, config.range_ratio, rng)
        max_tokens = _uniform_len(config.output_len, config.range_ratio, rng)
        yield WorkloadRequest(random_words(calibration.words_for(prompt_len), rng), max_tokens, prompt_len)


def _chat_requests(config: WorkloadConfig, rng: np.random.Generator) -> Iterator[WorkloadRequest]:
    prompts = chat_prompts(config.dataset_path)
    while True:
        for i in rng.permutation(len(prompts)):
            yield WorkloadRequest(prompts[i], config.output_len)


def _uniform_len(length: int, ratio: float, rng: np.random.Generator) -> int:
    """Uniform in ``[int(length*(1-ratio)), int(length*(1+ratio))]``, at least 1 (vLLM's rule)."""
    low, high = max(1, int(length * (1 - ratio))), max(1, int(length * (1 + ratio)))
    return int(rng.integers(low, high + 1))


def chat_prompts(path: Path | None = None) -> tuple[str, ...]:
    """The prompts of a JSONL file of ``{"prompt": ...}`` lines (default: the shipped set)."""
    if path is None:
        text = resources.files("tandem.bench").joinpath("data/chat_prompts.jsonl").read_text("utf-8")
    else:
        text = Path(path).read_text("utf-8")
    prompts = tuple(json.loads(line)["prompt"] for line in text.splitlines() if line.strip())
    if not prompts:
        raise ValueError(f"no prompts in {path or 'the shipped prompt set'}")
    return prompts


@cache
def vocabulary() -> tuple[str, ...]:
    """Short lowercase words of the shipped prompt set, sorted (so a seed means the same prompts)."""
    words = re.findall(r"[a-z]+", " ".join(chat_prompts()).lower())
    return tuple(sorted({w for w in words if 2 <= len(w) <= 8}))

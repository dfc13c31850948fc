"""The Hugging Face ``transformers`` baseline: load the same converted model, time ``generate``."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

from benchmarks.machine import CpuMeter


def load_hf(model_dir: Path, dtype: torch.dtype):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    try:
        model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    except TypeError:  # transformers < 4.56 spells it torch_dtype
        model = LlamaForCausalLM.from_pretrained(str(model_dir), torch_dtype=dtype)
    return model.eval()


class _StepClock:
    """A logits processor that only records when each step's logits arrive (one call per step)."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def hf_generate(model, prompts: list[list[int]], new_tokens: int, pad_id: int,
                clock: _StepClock | None = None, eos_ids: list[int] | None = None
                ) -> tuple[float, list[list[int]]]:
    """Greedy ``generate`` on the left-padded ``prompts``: (seconds, each row's new tokens).

    Exactly ``new_tokens`` per row; with ``eos_ids``, up to ``new_tokens``, until every row has
    produced one of them (rows that ended earlier carry padding after it).
    """
    from transformers import LogitsProcessorList

    stop = {"eos_token_id": eos_ids} if eos_ids else {"min_new_tokens": new_tokens}
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=pad_id, temperature=None, top_p=None,
                             top_k=None, logits_processor=LogitsProcessorList([clock] if clock else []),
                             **stop)
    secs = time.perf_counter() - t
    return secs, out[:, width:].tolist()


def hf_run(model, prompts: list[list[int]], batch: int, new_tokens: int, pad_id: int,
           warmup: int) -> dict:
    """Whole-``generate`` rate (B·N / T_N) and steady decode steps timed like the engine's.

    The interval between two consecutive logits-processor calls is one decode step (forward,
    logits processing, greedy pick, bookkeeping), the same span as one ``LLMEngine.step``.
    """
    chosen = [prompts[i % len(prompts)] for i in range(batch)]
    clock = _StepClock()
    with CpuMeter() as meter:
        tn, toks = hf_generate(model, chosen, new_tokens, pad_id, clock)
    secs = [b - a for a, b in zip(clock.times, clock.times[1:])][warmup:]
    return {"e2e": batch * new_tokens / tn, "decode": batch / statistics.median(secs),
            "decode_mean": batch * len(secs) / sum(secs), "ms_per_step": 1e3 * statistics.median(secs),
            "tn": tn, "tokens": toks, "other_cores": meter.other_cores}


def prefix_match(a: list[list[int]], b: list[list[int]]) -> str:
    """'k/n full, mean prefix p%': sequences identical, and the mean length of the common prefix."""
    full, fracs = 0, []
    for x, y in zip(a, b):
        m = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
        full += m == len(x) == len(y)
        fracs.append(m / max(len(x), 1))
    return f"{full}/{len(a)} full, mean prefix {100 * statistics.mean(fracs):.0f}%"

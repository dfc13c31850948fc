"""The engine runs ``benchmarks/engine.py`` times: prompts, a decode run, a prefill run, a profile.

Each run drives ``LLMEngine.step()`` directly (no worker, no gRPC) and returns a ``Result`` whose
FLOPs and bytes come from the ``CostModel``, so the caller can put it against the rooflines.
"""

from __future__ import annotations

import statistics
import time

from benchmarks.machine import CpuMeter, wait_quiet
from benchmarks.roofline import CostModel, Result
from services.engine import LLMEngine, SamplingParams

USER_PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain why the sky is blue to a ten-year-old.",
    "List five tips for staying productive when working from home.",
    "What are the main differences between Python and Rust?",
    "Describe the water cycle in a few sentences.",
    "Give me a recipe for a simple tomato soup.",
    "Summarize the plot of Romeo and Juliet.",
    "How does a hash table work? Keep it brief.",
]

LONG_TEXT = (
    "The history of computing is a story of people who wanted to count faster than their fingers "
    "allowed. Early mechanical calculators used gears and levers; later, punched cards carried "
    "instructions into looms and tabulating machines. Vacuum tubes gave way to transistors, and "
    "transistors were packed by the billion onto slivers of silicon. Each step made machines "
    "smaller, cheaper and quicker, and each step changed what people expected a computer to do. "
    "Today a phone in a pocket holds more memory than whole rooms of early machines, and large "
    "language models answer questions in fluent prose, predicting one token after another. "
)


def make_prompts(eng: LLMEngine) -> list[list[int]]:
    return [eng.chat_prompt(p) for p in USER_PROMPTS]


def exact_prompt(eng: LLMEngine, length: int, offset: int) -> list[int]:
    base = eng.tokenizer.encode(LONG_TEXT)
    reps = -(-(length + offset) // len(base)) + 1
    return (base * reps)[offset:offset + length]


_rid = 0


def _next_id(tag: str) -> str:
    global _rid
    _rid += 1
    return f"{tag}-{_rid}"


def run_decode(eng: LLMEngine, prompts: list[list[int]], batch: int, warmup: int, n: int,
               cost: CostModel, dtype: str) -> tuple[Result, list[list[int]]]:
    """``batch`` requests of ``warmup + n + 1`` tokens; time the last ``n`` decode steps."""
    max_tokens = warmup + n + 1
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    chosen = [prompts[i % len(prompts)] for i in range(batch)]
    meter = CpuMeter().__enter__()
    t0 = time.perf_counter()
    ids = [_next_id(f"dec{batch}") for _ in range(batch)]
    for rid, p in zip(ids, chosen):
        eng.add_request(rid, p, params)
    tokens: dict[str, list[int]] = {rid: [] for rid in ids}
    steps: list[tuple[float, int, bool]] = []   # (seconds, outputs, all requests already prefilled)
    while eng.has_unfinished():
        prefilled = all(tokens[r] for r in ids)
        ts = time.perf_counter()
        outs = eng.step()
        steps.append((time.perf_counter() - ts, len(outs), prefilled))
        for o in outs:
            tokens[o.request_id] += o.new_token_ids
    wall = time.perf_counter() - t0
    meter.__exit__()
    decode_steps = [s for s in steps if s[2]]
    timed = decode_steps[warmup:]
    assert all(k == batch for _, k, _ in timed), "a timed decode step did not serve the whole batch"
    secs = [t for t, _, _ in timed]
    mean_tok_s = sum(k for _, k, _ in timed) / sum(secs)
    tok_s = batch / statistics.median(secs)
    # context each query attends to in the timed steps: prompt + tokens so far (incl. the new one)
    mean_prompt = statistics.mean(len(p) for p in chosen)
    first = len(decode_steps) - len(timed)
    mean_ctx = mean_prompt + 1 + first + (len(timed) - 1) / 2
    res = Result(
        dtype=dtype, kind="decode", batch=batch, tokens_per_s=tok_s,
        ms_per_step=1e3 * statistics.median(secs),
        ms_per_step_p90=1e3 * sorted(secs)[int(0.9 * (len(secs) - 1))],
        steps=len(secs), mean_ctx=mean_ctx, e2e_tokens_per_s=batch * max_tokens / wall,
        mean_tokens_per_s=mean_tok_s, other_cores=meter.other_cores,
        flops=cost.decode_step_flops(batch, mean_ctx), bytes=cost.decode_step_bytes(batch, mean_ctx),
        seconds=statistics.median(secs),
        extra={"untimed_step_ms": [round(1e3 * t, 1) for t, _, _ in steps[:len(steps) - len(timed)]],
               "wall_s": wall})
    return res, [tokens[r] for r in ids]


def run_prefill(eng: LLMEngine, num_prompts: int, length: int, reps: int, cost: CostModel,
                dtype: str) -> Result:
    """``num_prompts`` prompts of exactly ``length`` tokens, ``max_tokens=1``; best of ``reps``."""
    params = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    times, nsteps = [], 0
    meter = CpuMeter().__enter__()
    for rep in range(reps):
        t0 = time.perf_counter()
        for i in range(num_prompts):
            eng.add_request(_next_id(f"pre{num_prompts}"), exact_prompt(eng, length, 7 * i + rep), params)
        nsteps = 0
        while eng.has_unfinished():
            eng.step()
            nsteps += 1
        times.append(time.perf_counter() - t0)
    meter.__exit__()
    best = min(times)
    return Result(dtype=dtype, kind="prefill", batch=num_prompts, tokens_per_s=num_prompts * length / best,
                  ms_per_step=1e3 * best, ms_per_step_p90=1e3 * max(times), steps=nsteps,
                  mean_ctx=(length + 1) / 2, flops=cost.prefill_flops(num_prompts, length), seconds=best,
                  other_cores=meter.other_cores, extra={"prompt_len": length, "reps": reps})


# ----------------------------------------------------------------------------------------------
# profile (optional)
# ----------------------------------------------------------------------------------------------
def profile_decode(eng: LLMEngine, prompts: list[list[int]], batch: int, steps: int = 8) -> str:
    from torch.profiler import ProfilerActivity, profile

    params = SamplingParams(max_tokens=steps + 4, temperature=0, ignore_eos=True)
    for i in range(batch):
        eng.add_request(_next_id("prof"), prompts[i % len(prompts)], params)
    for _ in range(3):  # prefill + warm-up
        eng.step()
    wait_quiet()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            eng.step()
    while eng.has_unfinished():
        eng.step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)

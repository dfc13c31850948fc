"""The cost of constrained decoding: grammar compile time (cold, cached) for a realistic schema, and
the per-step overhead at batch 1 and batch 32 with half the rows constrained, against the same run
unconstrained, side by side in one process.

    python -m benchmarks.constrained [--steps 48] [--threads 2] [--rounds 3]

Two views of the overhead, both robust to a machine shared with other work:
- interleaved runs: the unconstrained and the half-constrained batch alternate ``--rounds`` times;
  the overhead is the median of the per-round ratios (each pair ran back to back);
- in-step share: during the constrained runs, the time spent in grammar work on the engine thread
  (filling and applying the bitmask, advancing each matcher) is timed inside the very steps it
  belongs to, so load moves both sides of ``grammar / (step - grammar)`` together.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import services.engine.engine as engine_module
from services.engine import EngineConfig, LLMEngine, SamplingParams
from services.engine.constrained import GrammarCompilerPool, RequestGrammar
from services.engine.grammar import GrammarSpec
from tandem.settings import Settings

# A realistic tool-style schema (nested object, enum, array, integer, bounded strings).
SCHEMA = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]},
    "days": {"type": "array", "minItems": 64, "items": {"type": "integer", "minimum": -50, "maximum": 60}},
    "summary": {"type": "string", "maxLength": 200}}, "required": ["city", "unit", "days", "summary"],
    "additionalProperties": False}
SPEC = GrammarSpec("json_schema", schema=json.dumps(SCHEMA))


def compile_times(engine: LLMEngine) -> dict[str, float]:
    pool = GrammarCompilerPool(engine.tokenizer, engine.model_config.vocab_size, sorted(engine.eos_token_ids))
    t = time.perf_counter()
    pool.compile(GrammarSpec("json_object")).result()             # builds the TokenizerInfo too
    first = time.perf_counter() - t
    t = time.perf_counter()
    pool.compile(SPEC).result()
    cold = time.perf_counter() - t
    t = time.perf_counter()
    pool.compile(SPEC).result()
    cached = time.perf_counter() - t
    return {"tokenizer_info_and_first_s": first, "cold_s": cold, "cached_s": cached}


class GrammarTimer:
    """Accumulates the engine thread's grammar work: ``mask_logits`` and each matcher's ``accept``."""

    def __init__(self):
        self.seconds = 0.0
        self._mask, self._accept = engine_module.mask_logits, RequestGrammar.accept

    def _timed(self, fn):
        def run(*args):
            t = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.seconds += time.perf_counter() - t
        return run

    def __enter__(self):
        engine_module.mask_logits = self._timed(self._mask)
        RequestGrammar.accept = self._timed(self._accept)
        return self

    def __exit__(self, *exc):
        engine_module.mask_logits, RequestGrammar.accept = self._mask, self._accept


def run_steps(engine: LLMEngine, batch: int, constrained: int, steps: int) -> tuple[float, float]:
    """Median wall time of a decode step (after every row's prompt is in) and the median share of
    grammar work inside those steps (0 for an unconstrained batch), in ms."""
    prompt = engine.chat_prompt("Report the weather in Paris for the next days as JSON.")
    for i in range(batch):
        grammar = SPEC if i < constrained else None
        engine.add_request(f"b{batch}-{constrained}-{i}-{time.monotonic_ns()}", prompt, SamplingParams(
            max_tokens=steps + 1, temperature=0, ignore_eos=True, grammar=grammar))
    times, grammar_times = [], []
    with GrammarTimer() as timer:
        while engine.has_unfinished():
            before = timer.seconds
            t = time.perf_counter()
            outs = engine.step()
            if len(outs) == batch:
                times.append(time.perf_counter() - t)
                grammar_times.append(timer.seconds - before)
    return statistics.median(times[1:]) * 1000, statistics.median(grammar_times[1:]) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    engine = LLMEngine(EngineConfig(dtype="float32", num_threads=args.threads, kv_cache_bytes=1 << 30),
                       Settings.from_env().cache_dir)
    print(json.dumps({"compile": compile_times(engine)}))
    torch.manual_seed(0)
    run_steps(engine, 4, 2, 4)           # warm-up: first steps of a fresh engine are slow
    for batch in (1, 32):
        half = batch // 2 if batch > 1 else 1
        rounds = []
        for _ in range(args.rounds):     # interleaved: each constrained run right after its baseline
            plain, _ = run_steps(engine, batch, 0, args.steps)
            mixed, grammar = run_steps(engine, batch, half, args.steps)
            rounds.append({"unconstrained_step_ms": round(plain, 2), "constrained_step_ms": round(mixed, 2),
                           "grammar_ms_in_step": round(grammar, 2)})
        ratio = statistics.median(r["constrained_step_ms"] / r["unconstrained_step_ms"] for r in rounds)
        share = statistics.median(r["grammar_ms_in_step"] / (r["constrained_step_ms"] - r["grammar_ms_in_step"])
                                  for r in rounds)
        print(json.dumps({"batch": batch, "constrained_rows": half, "rounds": rounds,
                          "overhead_pct_interleaved": round(100 * (ratio - 1), 1),
                          "grammar_work_pct_of_step": round(100 * share, 1)}))


if __name__ == "__main__":
    main()

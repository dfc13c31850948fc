"""The cost of constrained decoding: grammar compile time (cold, cached) for a realistic schema, and
the per-step overhead at batch 1 and batch 32 with half the rows constrained, against the same run
unconstrained, side by side in one process.

    python -m benchmarks.constrained [--steps 48] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from services.engine import EngineConfig, LLMEngine, SamplingParams
from services.engine.constrained import GrammarCompilerPool
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
    pool = GrammarCompilerPool(engine.tokenizer.hf, engine.model_config.vocab_size, sorted(engine.eos_token_ids))
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


def step_ms(engine: LLMEngine, batch: int, constrained: int, steps: int) -> float:
    """Median wall time of a decode step (after every row's prompt is in)."""
    prompt = engine.chat_prompt("Report the weather in Paris for the next days as JSON.")
    for i in range(batch):
        grammar = SPEC if i < constrained else None
        engine.add_request(f"b{batch}-{constrained}-{i}", prompt, SamplingParams(
            max_tokens=steps + 1, temperature=0, ignore_eos=True, grammar=grammar))
    times = []
    while engine.has_unfinished():
        t = time.perf_counter()
        outs = engine.step()
        if len(outs) == batch:
            times.append(time.perf_counter() - t)
    return statistics.median(times[1:]) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    engine = LLMEngine(EngineConfig(dtype="float32", num_threads=args.threads, kv_cache_bytes=1 << 30),
                       Settings.from_env().cache_dir)
    print(json.dumps({"compile": compile_times(engine)}))
    torch.manual_seed(0)
    step_ms(engine, 4, 2, 4)           # warm-up: first steps of a fresh engine are slow
    for batch in (1, 32):
        half = batch // 2 if batch > 1 else 1
        plain = step_ms(engine, batch, 0, args.steps)
        mixed = step_ms(engine, batch, half, args.steps)
        print(json.dumps({"batch": batch, "constrained_rows": half, "unconstrained_step_ms": round(plain, 2),
                          "constrained_step_ms": round(mixed, 2), "overhead_pct": round(100 * (mixed / plain - 1), 1)}))


if __name__ == "__main__":
    main()

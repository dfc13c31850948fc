"""Aggregate throughput on a mixed chat workload: the engine against ``transformers`` ``generate``.

``benchmarks/engine.py`` compares one static batch of near-equal prompts decoded for a fixed number
of tokens: the best case for ``generate``, where both sides do the same matmuls. A serving engine
earns its keep elsewhere — prompts of different lengths, answers that end when the model says so —
and this script measures that, the way vLLM measured itself against Hugging Face:

* ``--requests`` chat requests (default 96), built from a fixed seed: a short instruction, and for
  every third request a reading passage of 64–768 tokens before it; greedy; ``max_tokens`` 256; the
  answer ends at the model's end-of-turn token or at the cap.
* **Engine**: all requests submitted at once, at most ``--batch`` (32) running; continuous batching
  admits a waiting request as soon as one finishes.
* **transformers**: the same requests, ``--batch`` at a time, each batch left-padded to its longest
  prompt and run by ``generate`` until every row has ended (the usual way to batch with it);
  tokens after a row's end-of-turn are padding, not output. Batches are taken in request order
  and, separately, sorted by prompt length (less padding; the answers' lengths are not known in
  advance, so that is the best static batching can do).
* Output tokens/s = tokens the client gets (up to and including the end-of-turn token) ÷ wall time
  from the first request to the last token, on both sides. The script also prints how many decode
  rows each side computed and checks that both produced the same tokens (greedy, same dtype).

Run from the repository root (≈15 min per dtype on 2 cores)::

    python -m benchmarks.throughput                          # float32
    python -m benchmarks.throughput --dtypes float32,bfloat16 --json throughput.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.baseline import hf_generate, load_hf, prefix_match  # noqa: E402
from benchmarks.engine_runs import LONG_TEXT, USER_PROMPTS  # noqa: E402
from benchmarks.machine import (CpuMeter, cache_dir, log, machine_info, measure_bandwidth,  # noqa: E402
                                measure_matmul)
from services.engine import EngineConfig, LLMEngine, SamplingParams  # noqa: E402
from services.engine.config import DTYPES  # noqa: E402

QUESTIONS = USER_PROMPTS + [
    "What is the capital of France?", "Name three colors.", "Write a haiku about the sea.",
    "How many legs does a spider have?", "Explain photosynthesis in one sentence.",
    "Who wrote Romeo and Juliet?", "Give me three ideas for a birthday party.",
    "What is machine learning?", "Write a limerick about a cat.", "Why do birds migrate?",
    "Describe a sunset over the ocean.", "What should I pack for a weekend hike?",
]
READING = "Read the passage, then answer.\n\n{passage}\n\nQuestion: {question}"
PASSAGE_QUESTIONS = ["Summarize the passage.", "What is the passage about?",
                     "List the main points of the passage.", "What changed over time, according to it?"]


def make_workload(eng: LLMEngine, n: int, seed: int) -> list[list[int]]:
    """``n`` chat prompts (token ids): instructions, and every third one a passage of 64–768 tokens."""
    rng = random.Random(seed)
    text_ids = eng.tokenizer.encode(LONG_TEXT)
    prompts = []
    for i in range(n):
        if i % 3 == 2:
            length = rng.randint(64, 768)
            start = rng.randrange(len(text_ids))
            passage_ids = (text_ids * (2 + length // len(text_ids)))[start:start + length]
            user = READING.format(passage=eng.tokenizer.decode(passage_ids),
                                  question=rng.choice(PASSAGE_QUESTIONS))
        else:
            user = rng.choice(QUESTIONS)
        prompts.append(eng.chat_prompt(user))
    return prompts


def run_engine(eng: LLMEngine, prompts: list[list[int]], max_tokens: int) -> dict:
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    tokens: dict[str, list[int]] = {}
    rows = steps = 0
    with CpuMeter() as meter:
        t0 = time.perf_counter()
        for i, p in enumerate(prompts):
            eng.add_request(f"tp-{i}", p, params)
            tokens[f"tp-{i}"] = []
        while eng.has_unfinished():
            rows += sum(1 for s in eng.scheduler.running if s.num_computed_tokens >= s.num_prompt_tokens)
            outs = eng.step()
            steps += 1
            for o in outs:
                tokens[o.request_id] += o.new_token_ids
        wall = time.perf_counter() - t0
    out = [tokens[f"tp-{i}"] for i in range(len(prompts))]
    return {"wall_s": wall, "tokens": out, "steps": steps, "decode_rows": rows,
            "other_cores": meter.other_cores}


def run_transformers(model, prompts: list[list[int]], batch: int, max_tokens: int, pad_id: int,
                     eos_ids: list[int]) -> dict:
    out, rows, steps = [], 0, 0
    eos = set(eos_ids)
    with CpuMeter() as meter:
        t0 = time.perf_counter()
        for b in range(0, len(prompts), batch):
            chunk = prompts[b:b + batch]
            _, new = hf_generate(model, chunk, max_tokens, pad_id, eos_ids=eos_ids)
            steps += len(new[0])
            rows += len(chunk) * (len(new[0]) - 1)   # the first token comes from the prefill pass
            for row in new:
                end = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
                out.append(row[:end])
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "tokens": out, "steps": steps, "decode_rows": rows,
            "other_cores": meter.other_cores}


def summarize(run: dict, prompts: list[list[int]]) -> dict:
    n_out = sum(len(t) for t in run["tokens"])
    useful_rows = n_out - len(prompts)     # decode rows that produced a token the client gets
    return {"wall_s": round(run["wall_s"], 2), "output_tokens": n_out,
            "output_tok_s": n_out / run["wall_s"],
            "total_tok_s": (n_out + sum(map(len, prompts))) / run["wall_s"],
            "steps": run["steps"], "decode_rows": run["decode_rows"],
            "useful_row_fraction": useful_rows / max(run["decode_rows"], 1),
            "other_cores": round(run["other_cores"], 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", default="float32", help="dtypes to compare (default: %(default)s)")
    ap.add_argument("--requests", type=int, default=96, help="requests (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=32,
                    help="engine max_num_seqs and transformers batch size (default: %(default)s)")
    ap.add_argument("--max-tokens", type=int, default=256, help="answer cap (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="workload seed (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--transformers-order", default="arrival,length",
                    help="how transformers' batches are formed: arrival (request order) and/or length "
                         "(sorted by prompt length) (default: %(default)s)")
    ap.add_argument("--skip-transformers", action="store_true", help="engine only")
    ap.add_argument("--skip-limits", action="store_true", help="do not measure matmul rate / bandwidth")
    ap.add_argument("--json", type=Path, help="write all results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [d for d in args.dtypes.split(",") if d]
    orders = [o for o in args.transformers_order.split(",") if o]
    if set(orders) - {"arrival", "length"}:
        ap.error(f"unknown --transformers-order {args.transformers_order}")
    for d in dtypes:
        if d not in DTYPES:
            ap.error(f"unknown dtype {d}")

    info = machine_info()
    log("# Tandem aggregate-throughput benchmark (mixed chat workload)\n")
    log("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    results: dict = {"machine": info, "args": vars(args) | {"json": str(args.json)}, "runs": {}}
    if not args.skip_limits:
        limits = {"float32": measure_matmul(torch.float32)["gflops"],
                  "bfloat16": measure_matmul(torch.bfloat16)["gflops"],
                  "bandwidth_gbps": measure_bandwidth()["gbps"]}
        results["limits"] = limits
        log(f"limits: matmul fp32 {limits['float32']:.1f} GFLOP/s, bf16 {limits['bfloat16']:.1f} GFLOP/s; "
            f"memory bandwidth {limits['bandwidth_gbps']:.1f} GB/s")

    for dtype in dtypes:
        eng = LLMEngine(EngineConfig(dtype=dtype, max_num_seqs=args.batch, kv_cache_bytes=2 << 30),
                        cache_dir())
        prompts = make_workload(eng, args.requests, args.seed)
        lens = sorted(map(len, prompts))
        log(f"\n## {dtype}: {len(prompts)} requests, prompt tokens min {lens[0]} / median "
            f"{statistics.median(lens):.0f} / max {lens[-1]}, max_tokens {args.max_tokens}, batch {args.batch}")
        eng.generate(prompts[:2], SamplingParams(max_tokens=4, temperature=0))      # warm-up
        e = run_engine(eng, prompts, args.max_tokens)
        es = summarize(e, prompts)
        log(f"engine:       {es['output_tok_s']:7.1f} output tok/s ({es['output_tokens']} tokens in "
            f"{es['wall_s']} s, {es['steps']} steps, {es['decode_rows']} decode rows, "
            f"{100 * es['useful_row_fraction']:.0f}% useful; other load {es['other_cores']} cores)")
        results["runs"][dtype] = {"engine": es, "prompt_lens": lens}
        if args.skip_transformers:
            continue
        model = load_hf(eng.model_dir, DTYPES[dtype])
        pad = eng.tokenizer.eos_token_id or 0
        eos = sorted(eng.eos_token_ids)
        run_transformers(model, prompts[:2], 2, 4, pad, eos)     # warm-up
        out_lens = sorted(map(len, e["tokens"]))
        log(f"answer lengths (engine): min {out_lens[0]} / median {statistics.median(out_lens):.0f} / "
            f"max {out_lens[-1]}; {sum(n >= args.max_tokens for n in out_lens)} hit the cap")
        results["runs"][dtype]["answer_lens"] = out_lens
        for order in orders:
            # "length": batches of similar prompt length, the best one can do without knowing
            # the answers' lengths in advance.
            idx = sorted(range(len(prompts)), key=lambda i: len(prompts[i])) if order == "length" \
                else list(range(len(prompts)))
            h = run_transformers(model, [prompts[i] for i in idx], args.batch, args.max_tokens, pad, eos)
            h["tokens"] = [t for _, t in sorted(zip(idx, h["tokens"]))]
            hs = summarize(h, prompts)
            ratio = es["output_tok_s"] / hs["output_tok_s"]
            same = prefix_match(e["tokens"], h["tokens"])
            log(f"transformers ({order} order): {hs['output_tok_s']:7.1f} output tok/s ({hs['output_tokens']} "
                f"tokens in {hs['wall_s']} s, {hs['steps']} steps, {hs['decode_rows']} decode rows, "
                f"{100 * hs['useful_row_fraction']:.0f}% useful; other load {hs['other_cores']} cores)")
            log(f"  engine ÷ transformers ({order} order): {ratio:.2f}× output tokens/s; "
                f"greedy tokens engine vs transformers: {same}")
            results["runs"][dtype][f"transformers_{order}"] = hs | {"ratio": ratio, "token_match": same}
        del model, eng
    log("\nGoal: >= 3x transformers' aggregate throughput at batch %d:" % args.batch)
    for dtype, run in results["runs"].items():
        ratios = {o: run[f"transformers_{o}"]["ratio"] for o in orders if f"transformers_{o}" in run}
        for order, r in ratios.items():
            log(f"  {dtype}, transformers batches in {order} order: {r:.2f}x: {'MET' if r >= 3 else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        log(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

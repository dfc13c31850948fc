"""Long-prompt TTFT through ``tandem up``, side by side with another checkout.

Starts ``tandem up`` from each checkout in turn (this one, and ``--before PATH``, e.g. ``git
worktree add /tmp/before HEAD``), the order flipped every round; against each it sends one short
request (not counted), then one chat completion per ``--lengths`` prompt (words drawn by
``tandem.bench.workload.random_words``, new text every round, the same text for both checkouts in a
round, so no prefix cache helps) with ``max_tokens=1``, and reads the gateway's ``prefill_time``
(arrival → first token, the MindIE field) and the client's wall time. The machine's fp32 and bf16
matmul rates are measured in the same run, so prefill tokens/s can be read against them::

    python -m benchmarks.prefill_ttft --before /tmp/before --rounds 3
    python -m benchmarks.prefill_ttft --before /tmp/before --env TANDEM_DTYPE=bfloat16

docs/benchmarks.md §2.5 has the runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from benchmarks.machine import CpuMeter, measure_matmul, parse_ints
from benchmarks.warm_start import UpStack, checkouts, side_by_side_args
from tandem.bench.workload import random_words

MODEL = "SmolLM2-135M-Instruct"


def ask(client: httpx.Client, text: str) -> dict:
    start = time.perf_counter()
    r = client.post("/chat/completions", json={"model": MODEL, "max_tokens": 1, "temperature": 0,
                                               "messages": [{"role": "user", "content": text}]})
    wall = time.perf_counter() - start
    r.raise_for_status()
    usage = r.json()["usage"]
    return {"prompt_tokens": usage["prompt_tokens"], "prefill_s": usage["prefill_time"], "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    side_by_side_args(ap, rounds=3, port=8392, timeout_s=300)
    ap.add_argument("--lengths", default="512,1024,2000", help="prompt lengths in words")
    args = ap.parse_args(argv)
    trees, env = checkouts(args)
    lengths = parse_ints(args.lengths)
    with CpuMeter() as meter:
        limits = {name: measure_matmul(dtype)["gflops"] for name, dtype in
                  (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    print(f"limits: matmul fp32 {limits['fp32']:.0f} GFLOP/s, bf16 {limits['bf16']:.0f} GFLOP/s (all threads, "
          f"square n=2048-4096, best); other load {meter.other_cores:.2f} cores", flush=True)
    results: dict[str, dict[int, list[dict]]] = {name: {n: [] for n in lengths} for name in trees}
    with tempfile.TemporaryDirectory(prefix="prefill-ttft-") as tmp:
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            texts = {n: random_words(n, np.random.default_rng(1000 * r + n)) for n in lengths}
            for name in order:
                stack = UpStack(trees[name], Path(tmp) / name, args.port, env, args.timeout_s)
                stack.require_ready()
                try:
                    with httpx.Client(base_url=f"http://127.0.0.1:{args.port}/v1", timeout=600) as client:
                        ask(client, f"warm-up {r}")
                        for n in lengths:
                            with CpuMeter() as m:     # other processes' load just before (the stack idles)
                                time.sleep(0.5)
                            res = ask(client, texts[n])
                            res["other_cores"] = m.other_cores
                            results[name][n].append(res)
                            print(f"round {r + 1} {name}: {res['prompt_tokens']} prompt tokens, prefill_time "
                                  f"{res['prefill_s'] * 1000:.0f} ms, wall {res['wall_s'] * 1000:.0f} ms; other "
                                  f"processes {m.other_cores:.2f} cores just before", flush=True)
                finally:
                    stack.stop()
    print()
    names = list(trees)
    print("| prompt tokens | " + " | ".join(f"{n} TTFT ms (rounds) | {n} median" for n in names)
          + (" | after / before |" if len(names) == 2 else " |"))
    print("|---:|" + "---|---:|" * len(names) + ("---:|" if len(names) == 2 else ""))
    for n in lengths:
        tokens = results[names[-1]][n][0]["prompt_tokens"]
        medians = {name: statistics.median(x["prefill_s"] for x in results[name][n]) for name in names}
        cells = " | ".join(", ".join(f"{x['prefill_s'] * 1000:.0f}" for x in results[name][n])
                           + f" | {medians[name] * 1000:.0f}" for name in names)
        ratio = f" | {medians['after'] / medians['before']:.2f}× |" if len(names) == 2 else " |"
        print(f"| {tokens:,} | {cells}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

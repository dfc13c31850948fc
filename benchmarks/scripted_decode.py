"""The scripted decode step against the eager layers, in one process, step by step alternating.

For each mode and batch size: one engine, ``B`` greedy requests (``ignore_eos``); after a warm-up,
every decode step is timed with ``model.script_decode`` switched on and off in turn, so both see
the same machine from one step to the next (on a shared machine, separate processes measured the
same matmuls 40% apart). Prints the median step of each and the ratio, with the machine's limits
and load before and after::

    python -m benchmarks.scripted_decode [--modes float32,bfloat16,int4] [--batches 1,8,32]
        [--steps 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.engine_step import USER_PROMPTS, cpu_flags_line, limits  # noqa: E402
from benchmarks.engine_quality import MODES  # noqa: E402


def measure(mode: str, batch: int, steps: int, threads: int, cache: Path) -> dict:
    from services.engine import EngineConfig, LLMEngine, SamplingParams

    eng = LLMEngine(EngineConfig(max_num_seqs=batch, kv_cache_bytes=256 << 20, num_threads=threads,
                                 **MODES[mode]), cache)
    prompts = [eng.chat_prompt(p) for p in USER_PROMPTS]
    params = SamplingParams(max_tokens=steps + 8, temperature=0, ignore_eos=True)
    for i in range(batch):
        eng.add_request(f"r{i}", prompts[i % len(prompts)], params)
    for _ in range(6):                       # prefill, the first scripted call, warm-up
        eng.step()
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(steps):
        scripted = i % 2 == 0
        eng.model.script_decode = scripted
        t = time.perf_counter()
        eng.step()
        times[scripted].append(time.perf_counter() - t)
    while eng.has_unfinished():
        eng.step()
    eager, scripted = (1e3 * statistics.median(times[k]) for k in (False, True))
    return {"mode": mode, "batch": batch, "eager_ms": eager, "scripted_ms": scripted, "speedup": eager / scripted}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="float32,bfloat16,int4")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--steps", type=int, default=64, help="timed decode steps, half of them scripted")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    cache = Path(os.environ.get("TANDEM_CACHE_DIR", Path.home() / ".cache" / "tandem"))
    print(f"# limits before: {limits()}\n# {cpu_flags_line()}", flush=True)
    rows = []
    for mode in args.modes.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            r = measure(mode, batch, args.steps, args.threads, cache)
            rows.append(r)
            print(f"{mode:9s} B={batch:<3d} eager {r['eager_ms']:7.2f} ms  scripted {r['scripted_ms']:7.2f} ms  "
                  f"{r['speedup']:.2f}×", flush=True)
    print(f"# limits after: {limits()}")
    print("\n| mode | batch | eager step ms | scripted step ms | eager ÷ scripted |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['batch']} | {r['eager_ms']:.1f} | {r['scripted_ms']:.1f} | {r['speedup']:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

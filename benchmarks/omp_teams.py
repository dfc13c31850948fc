"""A worker's engine loop with one OpenMP team against two, in alternating subprocesses.

A worker loads its engine on the main thread and steps it on the engine-loop thread. ``two``
reproduces that as it was before ``services/engine/omp.py``: libgomp then holds two teams (more
OpenMP threads than cpus on a 2-cpu machine) and throttles their spinning. ``one`` is what workers
do now: the main thread's team released (``omp.release``) and its ops made serial
(``omp.serial``) before the loop starts. Each subprocess decodes one greedy request of
``--tokens`` tokens at one row and prints its median step and the CPU each of its threads used per
step; runs alternate ``two``/``one`` for ``--rounds`` rounds, and the machine's limits are printed
before and after::

    python -m benchmarks.omp_teams [--rounds 4] [--tokens 300] [--threads 2] [--mode int4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.engine_step import cpu_flags_line, limits  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _thread_ticks() -> dict[str, int]:
    ticks = {}
    for tid in os.listdir(f"/proc/{os.getpid()}/task"):
        with open(f"/proc/{os.getpid()}/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks[tid] = int(fields[11]) + int(fields[12])     # utime + stime
    return ticks


def child(layout: str, mode: str, tokens: int, threads: int) -> dict:
    """Load an engine on this (main) thread, decode on another thread as a worker does."""
    from benchmarks.engine_quality import MODES
    from services.engine import EngineConfig, LLMEngine, SamplingParams, omp
    from tandem.settings import Settings

    eng = LLMEngine(EngineConfig(kv_cache_bytes=1 << 30, num_threads=threads, **MODES[mode]),
                    Settings.from_env().cache_dir)
    if layout == "one":
        omp.release()
        omp.serial()
    result = {}

    def loop():
        params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
        eng.add_request("warm", eng.chat_prompt("Tell me a long story."), SamplingParams(max_tokens=16))
        while eng.has_unfinished():
            eng.step()
        eng.add_request("r", eng.chat_prompt("Tell me a long story."), params)
        eng.step()                                  # the prefill
        before, steps = _thread_ticks(), []
        while eng.has_unfinished():
            t = time.perf_counter()
            eng.step()
            steps.append(time.perf_counter() - t)
        after = _thread_ticks()
        hz = os.sysconf("SC_CLK_TCK")
        busy = sorted((1e3 * (after[k] - before.get(k, 0)) / hz / len(steps) for k in after
                       if after[k] > before.get(k, 0)), reverse=True)
        result.update(step_ms=1e3 * statistics.median(steps), thread_cpu_ms=busy[:3],
                      process_threads=len(after))

    worker = threading.Thread(target=loop, name="engine-loop")
    worker.start()
    worker.join()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", default="int4", help="benchmarks.engine_quality MODES: float32, bfloat16, int4")
    ap.add_argument("--child", choices=("one", "two"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.mode, args.tokens, args.threads)))
        return 0
    print(f"# limits before: {limits()}\n# {cpu_flags_line()}", flush=True)
    runs: dict[str, list[dict]] = {"two": [], "one": []}
    for rnd in range(args.rounds):
        for layout in ("two", "one") if rnd % 2 == 0 else ("one", "two"):
            out = subprocess.run([sys.executable, "-m", "benchmarks.omp_teams", "--child", layout,
                                  "--mode", args.mode, "--tokens", str(args.tokens), "--threads", str(args.threads)],
                                 cwd=ROOT, capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            runs[layout].append(r)
            print(f"round {rnd + 1} {layout} team(s): step {r['step_ms']:.1f} ms, busiest threads "
                  f"{', '.join(f'{c:.1f}' for c in r['thread_cpu_ms'])} ms CPU per step", flush=True)
    print(f"# limits after: {limits()}")
    two, one = (statistics.median(r["step_ms"] for r in runs[k]) for k in ("two", "one"))
    ratios = [a["step_ms"] / b["step_ms"] for a, b in zip(runs["two"], runs["one"])]
    print(f"\n{args.mode}, one row, {args.threads} threads: median step two teams {two:.1f} ms, one team "
          f"{one:.1f} ms; two ÷ one per round {' / '.join(f'{x:.2f}' for x in ratios)} "
          f"(median {statistics.median(ratios):.2f}×)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Two ways of running a decode step, in one process, step by step alternating.

``--switch script`` (default): the scripted decode step against the eager layers
(``model.script_decode``). ``--switch norm``: the fused RMSNorm against the reference one
(``EngineConfig.rms_norm``; the model's flag, which eager and scripted steps alike read).
``--switch pack``: dense bf16 weights packed for oneDNN against plain ones (``model.pack_rows``,
``services/engine/packed.py``; same bits).

For each mode and batch size: one engine, ``B`` greedy requests (``ignore_eos``); after a warm-up,
every decode step is timed with the switch on and off in turn, so both see the same machine from
one step to the next (on a shared machine, separate processes measured the same matmuls 40% apart).
Prints the median step of each and the ratio, with the machine's limits and load before and after::

    python -m benchmarks.scripted_decode [--switch script|norm|pack] [--modes float32,bfloat16,int4]
        [--batches 1,8,32] [--steps 64] [--threads 1]
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
from services.engine import packed  # noqa: E402


SWITCHES = {   # name: (label off, label on, what turns it on or off in a loaded engine)
    "script": ("eager", "scripted", lambda eng, on: setattr(eng.model, "script_decode", on)),
    "norm": ("reference norm", "fused norm", lambda eng, on: setattr(eng.model, "fused_norm", on)),
    "pack": ("plain weights", "packed weights",
             lambda eng, on: setattr(eng.model, "pack_rows", packed.MAX_ROWS if on else 0)),
}


def measure(mode: str, batch: int, steps: int, threads: int, cache: Path, switch: str = "script") -> dict:
    from services.engine import EngineConfig, LLMEngine, SamplingParams

    eng = LLMEngine(EngineConfig(max_num_seqs=batch, kv_cache_bytes=256 << 20, num_threads=threads,
                                 **MODES[mode]), cache)
    prompts = [eng.chat_prompt(p) for p in USER_PROMPTS]
    params = SamplingParams(max_tokens=steps + 8, temperature=0, ignore_eos=True)
    for i in range(batch):
        eng.add_request(f"r{i}", prompts[i % len(prompts)], params)
    for _ in range(6):                       # prefill, the first scripted call, warm-up
        eng.step()
    turn = SWITCHES[switch][2]
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(steps):
        on = i % 2 == 0
        turn(eng, on)
        t = time.perf_counter()
        eng.step()
        times[on].append(time.perf_counter() - t)
    while eng.has_unfinished():
        eng.step()
    off_ms, on_ms = (1e3 * statistics.median(times[k]) for k in (False, True))
    return {"mode": mode, "batch": batch, "off_ms": off_ms, "on_ms": on_ms, "speedup": off_ms / on_ms}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="float32,bfloat16,int4")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--steps", type=int, default=64, help="timed decode steps, half of them scripted")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--switch", choices=sorted(SWITCHES), default="script")
    args = ap.parse_args(argv)
    off, on, _ = SWITCHES[args.switch]
    cache = Path(os.environ.get("TANDEM_CACHE_DIR", Path.home() / ".cache" / "tandem"))
    print(f"# limits before: {limits()}\n# {cpu_flags_line()}", flush=True)
    rows = []
    for mode in args.modes.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            r = measure(mode, batch, args.steps, args.threads, cache, args.switch)
            rows.append(r)
            print(f"{mode:9s} B={batch:<3d} {off} {r['off_ms']:7.2f} ms  {on} {r['on_ms']:7.2f} ms  "
                  f"{r['speedup']:.2f}×", flush=True)
    print(f"# limits after: {limits()}")
    print(f"\n| mode | batch | {off} step ms | {on} step ms | {off} ÷ {on} |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['batch']} | {r['off_ms']:.1f} | {r['on_ms']:.1f} | {r['speedup']:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

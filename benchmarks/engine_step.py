"""Where a decode step's time goes, and before/after of engine changes, side by side in one run.

For each engine source tree (this checkout, and optionally ``--baseline DIR``: another checkout or
``git archive`` of an older commit), dtype and batch size, a fresh subprocess loads the engine,
decodes ``B`` greedy requests and reports:

- the median decode step (ms) and tokens/s = B ÷ median step;
- the same step under ``torch.profiler``: self time of the weight matmuls (``mm``/``addmm``/
  ``linear``-family), of attention (SDPA/bmm/softmax), of the KV gather (``index_select``), and of
  everything else, with the number of ops per step;
- the matmuls alone: every weight of the model applied to ``B`` rows in a tight loop (the floor a
  step could reach with zero per-op overhead).

Trees alternate per configuration (baseline, current, baseline, current …) so both see the same
machine; each configuration keeps its fastest of ``--repeats``. The machine's limits (matmul rate
and bandwidth) and ``uptime`` are printed before and after. Run from the repository root::

    python -m benchmarks.engine_step                                  # this tree only
    python -m benchmarks.engine_step --dtypes int4 --batches 1 --top    # and the costliest ops
    git archive main | tar -x -C /tmp/base && python -m benchmarks.engine_step --baseline /tmp/base
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::_weight_int8pack_mm", "aten::_weight_int4pack_mm_for_cpu",
              "quantized::linear_dynamic", "mkldnn::_linear_pointwise", "aten::mkldnn_linear")
ATTN_OPS = ("scaled_dot_product", "aten::bmm", "aten::_softmax", "aten::baddbmm")
GATHER_OPS = ("aten::index_select",)
TOP_OPS = 8   # the costliest ops of a step (self time), printed with --top
USER_PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain why the sky is blue to a ten-year-old.",
    "List five tips for staying productive when working from home.",
    "What are the main differences between Python and Rust?",
]


# ----------------------------------------------------------------------------------------------
# worker: one (tree, dtype, batch) in its own process
# ----------------------------------------------------------------------------------------------
MODES = {"float32": {"dtype": "float32"}, "bfloat16": {"dtype": "bfloat16"},
         "int4": {"dtype": "bfloat16", "weights": "int4"}}


def worker(dtype: str, batch: int, steps: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from services.engine import EngineConfig, LLMEngine, SamplingParams

    cache = Path(os.environ.get("TANDEM_CACHE_DIR", Path.home() / ".cache" / "tandem"))
    eng = LLMEngine(EngineConfig(max_num_seqs=batch, kv_cache_bytes=256 << 20, num_threads=threads,
                                 **MODES[dtype]), cache)
    prompts = [eng.chat_prompt(p) for p in USER_PROMPTS]
    params = SamplingParams(max_tokens=2 * steps + 8, temperature=0, ignore_eos=True)
    for i in range(batch):
        eng.add_request(f"r{i}", prompts[i % len(prompts)], params)
    for _ in range(4):                       # prefill + warm-up
        eng.step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        eng.step()
        times.append(time.perf_counter() - t)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            eng.step()
    buckets = {"matmul": 0.0, "attention": 0.0, "kv_gather": 0.0, "other": 0.0}
    n_ops = 0
    for e in prof.key_averages():
        if e.key.startswith("ProfilerStep") or e.key.startswith("## "):
            continue
        n_ops += e.count
        us = e.self_cpu_time_total
        name = ("matmul" if e.key in MATMUL_OPS else "attention" if any(a in e.key for a in ATTN_OPS)
                else "kv_gather" if e.key in GATHER_OPS else "other")
        buckets[name] += us
    top = sorted(((e.key, e.self_cpu_time_total / 1e3 / steps, e.count / steps) for e in prof.key_averages()
                  if not e.key.startswith(("ProfilerStep", "## "))), key=lambda r: -r[1])[:TOP_OPS]
    while eng.has_unfinished():
        eng.step()
    # the matmuls alone: each weight once per layer on `batch` rows, plus the head
    m = eng.model
    dt = next(m.parameters()).dtype
    weights = [w for layer in m.layers for w in _layer_weights(layer)] + [m.lm_head]
    xs = {w.shape[1]: torch.randn(batch, w.shape[1]).to(dt) for w in weights}
    try:
        from services.engine.quant import linear as lin
    except ImportError:          # a tree from before quant.py
        lin = F.linear
    with torch.inference_mode():
        for w in weights:
            lin(xs[w.shape[1]], w)
        mm = []
        for _ in range(5):
            t = time.perf_counter()
            for w in weights:
                lin(xs[w.shape[1]], w)
            mm.append(time.perf_counter() - t)
    ms = lambda us: round(us / 1e3 / steps, 3)  # noqa: E731
    return {"dtype": dtype, "batch": batch, "step_ms": 1e3 * statistics.median(times),
            "tok_s": batch / statistics.median(times), "matmul_alone_ms": 1e3 * min(mm),
            "ops_per_step": round(n_ops / steps),
            "top_ops": [{"op": k, "ms_per_step": round(t, 3), "calls_per_step": round(n, 1)} for k, t, n in top],
            **{f"prof_{k}_ms": ms(v) for k, v in buckets.items()}}


def _layer_weights(layer) -> list:
    names = [n for n in ("qkv", "o", "gate_up", "down") if hasattr(layer, n)]
    return [getattr(layer, n) for n in names]


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------
def run_one(tree: Path, dtype: str, batch: int, steps: int, threads: int) -> dict:
    # the script itself runs as the worker, importing `services` from `tree`
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", dtype, str(batch), str(steps), str(threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line:
        raise RuntimeError(f"worker failed ({tree}, {dtype}, B={batch}):\n{out.stderr[-3000:]}")
    return json.loads(line[0][7:])


def limits() -> str:
    sys.path.insert(0, str(ROOT))
    from benchmarks.machine import measure_bandwidth, measure_matmul
    import torch
    mm32 = measure_matmul(torch.float32, sizes=(2048,), reps=2)
    mm16 = measure_matmul(torch.bfloat16, sizes=(2048,), reps=2)
    bw = measure_bandwidth(mib=256, reps=3)
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return f"matmul fp32 {mm32} | bf16 {mm16} | bandwidth {bw} | {up}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", type=Path, help="another source tree to compare against")
    ap.add_argument("--current", type=Path, default=ROOT, help="the tree measured as current "
                    "(default: this checkout)")
    ap.add_argument("--dtypes", default="float32,bfloat16,int4", help="modes: float32, bfloat16, "
                    "int4 (bf16 + 4-bit weights; this tree only)")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per engine (default 1, "
                    "as `tandem up` runs each worker)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--top", action="store_true", help=f"print the {TOP_OPS} costliest ops of each step (self time)")
    args = ap.parse_args(argv)
    trees = ([("baseline", args.baseline.resolve())] if args.baseline else []) + [("current", args.current.resolve())]
    print(f"# limits before: {limits()}", flush=True)
    print(f"# cpu flags: {cpu_flags_line()}", flush=True)
    rows = []
    for dtype in args.dtypes.split(","):
        for b in (int(x) for x in args.batches.split(",")):
            best: dict[str, dict] = {}
            run_trees = [t for t in trees if dtype in ("float32", "bfloat16") or t[0] == "current"]
            for _ in range(args.repeats):
                for name, tree in run_trees:
                    r = run_one(tree, dtype, b, args.steps, args.threads)
                    if name not in best or r["step_ms"] < best[name]["step_ms"]:
                        best[name] = r
            for name, _ in run_trees:
                r = dict(best[name], tree=name)
                rows.append(r)
                ratio = (f"  {best['baseline']['step_ms'] / r['step_ms']:.2f}× baseline"
                         if name == "current" and "baseline" in best else "")
                print(f"{name:8s} {dtype:8s} B={b:<3d} step {r['step_ms']:7.1f} ms  {r['tok_s']:7.1f} tok/s  "
                      f"matmuls alone {r['matmul_alone_ms']:6.1f} ms  ops/step {r['ops_per_step']:5d}  "
                      f"profiled: mm {r['prof_matmul_ms']:.1f} attn {r['prof_attention_ms']:.1f} "
                      f"gather {r['prof_kv_gather_ms']:.1f} other {r['prof_other_ms']:.1f} ms{ratio}",
                      flush=True)
                if args.top:
                    print("    top ops (ms/step, calls/step): " + ", ".join(
                        f"{o['op']} {o['ms_per_step']:.2f} ({o['calls_per_step']:g})" for o in r.get("top_ops", [])),
                        flush=True)
    print(f"# limits after: {limits()}", flush=True)
    ref_tree = "baseline" if args.baseline else "current"
    print(f"\n| tree | mode | batch | step ms | tok/s | × {ref_tree} float32 |\n|---|---|---:|---:|---:|---:|")
    for r in rows:
        ref = next((x for x in rows if x["tree"] == ref_tree and x["dtype"] == "float32"
                    and x["batch"] == r["batch"]), None)
        ratio = f"{r['tok_s'] / ref['tok_s']:.2f}×" if ref else "–"
        print(f"| {r['tree']} | {r['dtype']} | {r['batch']} | {r['step_ms']:.1f} | {r['tok_s']:.1f} | {ratio} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def cpu_flags_line() -> str:
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    import torch
    keep = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    return f"{' '.join(keep)}; torch capability {torch.backends.cpu.get_cpu_capability()}"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        d, b, n, t = sys.argv[2:6]
        print("RESULT", json.dumps(worker(d, int(b), int(n), int(t))), flush=True)
        sys.exit(0)
    if __package__ in (None, ""):
        sys.path.insert(0, str(ROOT))
    sys.exit(main())

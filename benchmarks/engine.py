"""Engine throughput against the machine's limits and against Hugging Face ``transformers``.

One run prints, for each engine dtype asked for:

1. the machine's measured limits: dense matmul rate (GFLOP/s, fp32 and bf16) and memory bandwidth;
2. engine decode throughput (aggregate tokens/s over the batch) and per-step latency at each batch
   size, timed over steady decode steps only (the prefill step and a few warm-up steps excluded);
3. engine prefill throughput for prompts of exactly ``--prefill-len`` tokens;
4. each as a fraction of its roofline (formulas in ``docs/benchmarks.md`` and printed below);
5. a ``transformers`` ``generate`` baseline on the same prompts and token counts, and the ratio.

Run from the repository root::

    python -m benchmarks.engine                       # fp32 and bf16, the default sizes
    python -m benchmarks.engine --dtypes bfloat16 --batches 1,64 --skip-transformers
    python -m benchmarks.engine --json bench.json --profile

The model is the engine's default (SmolLM2-135M-Instruct GGUF, converted once into the cache dir
``$TANDEM_CACHE_DIR`` or ``~/.cache/tandem``).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.baseline import hf_generate, hf_run, load_hf, prefix_match  # noqa: E402
from benchmarks.machine import (QUIET, CpuMeter, cache_dir, contended, log, machine_info,  # noqa: E402
                                measure_bandwidth, measure_matmul, parse_ints, speed_probe, wait_quiet)
from benchmarks.roofline import CostModel, Result, apply_rooflines  # noqa: E402
from services.engine import EngineConfig, LLMEngine, SamplingParams  # noqa: E402
from services.engine.config import DTYPES  # noqa: E402

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


# ----------------------------------------------------------------------------------------------
# engine runs
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", default="float32,bfloat16", help="engine dtypes (default: %(default)s)")
    ap.add_argument("--batches", default="1,8,32,64", help="decode batch sizes (default: %(default)s)")
    ap.add_argument("--decode-tokens", type=int, default=48,
                    help="timed decode steps per batch size (default: %(default)s)")
    ap.add_argument("--warmup-steps", type=int, default=4,
                    help="decode steps after the prefill that are not timed (default: %(default)s)")
    ap.add_argument("--prefill-len", type=int, default=512, help="prefill prompt length (default: %(default)s)")
    ap.add_argument("--prefill-batches", default="1,4",
                    help="prompts per prefill step (default: %(default)s)")
    ap.add_argument("--prefill-reps", type=int, default=2, help="prefill repetitions, best kept")
    ap.add_argument("--hf-batches", default="1,32", help="transformers baseline batch sizes (default: %(default)s)")
    ap.add_argument("--skip-transformers", action="store_true", help="no transformers baseline")
    ap.add_argument("--skip-limits", action="store_true", help="do not measure matmul rate / bandwidth")
    ap.add_argument("--peak-gflops", default="", help="use these instead of measuring, e.g. 100,400 (fp32,bf16)")
    ap.add_argument("--bandwidth-gbps", type=float, default=0.0, help="use this instead of measuring")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs of each decode measurement (engine and transformers); the fastest median "
                         "step is kept, which filters out other processes' bursts (default: %(default)s)")
    ap.add_argument("--retries", type=int, default=2,
                    help="extra runs of a measurement whose best run was disturbed by other processes "
                         "(default: %(default)s)")
    ap.add_argument("--limits-once", action="store_true",
                    help="measure the machine limits only before the runs, not also after them")
    ap.add_argument("--wait-quiet", type=float, default=30.0,
                    help="before each measurement wait up to this many seconds for other processes to "
                         "use < 0.25 cores (shared machines; 0: never wait) (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--profile", action="store_true",
                    help="print a torch.profiler table of decode steps at the largest batch")
    ap.add_argument("--json", type=Path, help="write all results here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    QUIET["max_wait"] = args.wait_quiet
    dtypes = [d for d in args.dtypes.split(",") if d]
    for d in dtypes:
        if d not in DTYPES:
            ap.error(f"unknown dtype {d}")
    batches = parse_ints(args.batches)
    prefill_batches = parse_ints(args.prefill_batches)
    hf_batches = [] if args.skip_transformers else parse_ints(args.hf_batches)
    started = time.perf_counter()

    info = machine_info()
    log("# Tandem engine benchmark\n")
    log("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))

    # 1. machine limits (measured before and after the engine runs; the rooflines use the best)
    limits: dict = {"runs": []}

    def measure_limits(label: str) -> None:
        wait_quiet()
        with CpuMeter() as meter:
            run = {"label": label, "float32": measure_matmul(torch.float32),
                   "bfloat16": measure_matmul(torch.bfloat16), "bandwidth": measure_bandwidth()}
        run["other_cores"] = meter.other_cores
        limits["runs"].append(run)
        b = run["bandwidth"]
        log(f"limits ({label}): matmul fp32 {run['float32']['gflops']:.1f} GFLOP/s, bf16 "
            f"{run['bfloat16']['gflops']:.1f} GFLOP/s (square n={'/'.join(map(str, run['float32']['by_size']))}, "
            f"best); memory bandwidth {b['gbps']:.1f} GB/s (copy {b['copy']:.1f}, sum {b['sum']:.1f}, "
            f"add {b['add']:.1f}; {b['buffer_mib']} MiB buffers); other load {meter.other_cores:.2f} cores")

    def current_limits() -> tuple[dict[str, float], float]:
        peaks = {n: max(r[n]["gflops"] for r in limits["runs"]) * 1e9 for n in ("float32", "bfloat16")
                 } if limits["runs"] else {}
        bw = max(r["bandwidth"]["gbps"] for r in limits["runs"]) * 1e9 if limits["runs"] else float("nan")
        if args.peak_gflops:
            f32, bf16 = (float(x) for x in args.peak_gflops.split(","))
            peaks = {"float32": f32 * 1e9, "bfloat16": bf16 * 1e9}
        if args.bandwidth_gbps:
            bw = args.bandwidth_gbps * 1e9
        return peaks, bw

    if not args.skip_limits:
        measure_limits("start")

    results: list[Result] = []
    profiles: dict[str, str] = {}
    cost_json: dict = {}
    new_tokens = args.warmup_steps + args.decode_tokens + 1
    for dtype in dtypes:
        tdt = DTYPES[dtype]
        max_prompt = max(len(p) for p in USER_PROMPTS) * 4 + 64
        budget = max(args.prefill_len * max(prefill_batches or [1]), max(batches) * max_prompt, 2048)
        config = EngineConfig(dtype=dtype, max_num_seqs=max(max(batches), max(prefill_batches or [1])),
                              max_num_batched_tokens=budget, kv_cache_bytes=768 << 20,
                              num_threads=args.threads)
        t = time.perf_counter()
        eng = LLMEngine(config, cache_dir())
        log(f"\n## engine dtype={dtype} (loaded in {time.perf_counter() - t:.1f}s, "
            f"max_num_batched_tokens={budget})")
        cost = CostModel.of(eng.model_config, eng.model, tdt)
        cost_json[dtype] = asdict(cost)
        prompts = make_prompts(eng)
        pad_id = eng.tokenizer.eos_token_id or 0
        hf = None
        if hf_batches:
            t = time.perf_counter()
            hf = load_hf(eng.model_dir, tdt)
            log(f"transformers LlamaForCausalLM loaded in {time.perf_counter() - t:.1f}s")
            hf_generate(hf, prompts[:2], 4, pad_id)  # warm-up
        # warm-up: one small generate so first-call costs (allocator, kernels) are not timed
        eng.generate(prompts[:2], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))

        # 2. decode; the transformers baseline runs right after the engine at the same batch size so
        # that both see the same machine conditions
        for b in sorted(set(batches) | set(hf_batches)):
            r = toks = h = None
            # engine and transformers alternate; each keeps its fastest run. A run during which other
            # processes were busy is repeated (up to --retries more times) after waiting for quiet.
            for attempt in range(args.repeats + args.retries):
                extra = attempt >= args.repeats
                if b in batches and (not extra or contended(r)):
                    probe = speed_probe()
                    rr, tt = run_decode(eng, prompts, b, args.warmup_steps, args.decode_tokens, cost, dtype)
                    rr.probe_gflops = probe
                    best_e2e = max(rr.e2e_tokens_per_s, r.e2e_tokens_per_s if r else 0.0)
                    if r is None or rr.seconds < r.seconds:
                        r, toks = rr, tt
                    r.e2e_tokens_per_s = best_e2e
                if hf is not None and b in hf_batches and (not extra or contended(h)):
                    probe = speed_probe()
                    hh = hf_run(hf, prompts, b, new_tokens, pad_id, args.warmup_steps)
                    hh["probe"] = probe
                    best_e2e = max(hh["e2e"], h["e2e"] if h else 0.0)
                    if h is None or hh["ms_per_step"] < h["ms_per_step"]:
                        h = hh
                    h["e2e"] = best_e2e
            if r is not None:
                r.extra["tokens"] = toks
                results.append(r)
                log(f"decode  B={b:<3d} {r.tokens_per_s:8.1f} tok/s  step {r.ms_per_step:6.1f} ms "
                    f"(p90 {r.ms_per_step_p90:.1f}; mean-based {r.mean_tokens_per_s:.1f} tok/s; whole run "
                    f"{r.e2e_tokens_per_s:.1f} tok/s)  other load {r.other_cores:.2f} cores, "
                    f"probe {r.probe_gflops:.0f} GFLOP/s")
            if h is not None:
                if r is None:
                    r = Result(dtype=dtype, kind="decode", batch=b, tokens_per_s=float("nan"),
                               ms_per_step=float("nan"))
                    results.append(r)
                r.hf_tokens_per_s, r.hf_e2e_tokens_per_s = h["decode"], h["e2e"]
                r.hf_ms_per_step, r.hf_mean_tokens_per_s = h["ms_per_step"], h["decode_mean"]
                r.hf_other_cores, r.hf_probe_gflops = h["other_cores"], h["probe"]
                r.extra["hf_tokens"] = h["tokens"]
                r.hf_match = prefix_match(toks, h["tokens"]) if toks else None
                log(f"  transformers B={b:<3d} {h['decode']:8.1f} tok/s  step {h['ms_per_step']:6.1f} ms "
                    f"(mean-based {h['decode_mean']:.1f} tok/s; whole generate {h['e2e']:.1f} tok/s, "
                    f"{h['tn']:.1f}s)  other load {h['other_cores']:.2f} cores, probe {h['probe']:.0f} GFLOP/s  "
                    f"engine/transformers {r.tokens_per_s / h['decode']:.2f}x steady, "
                    f"{r.e2e_tokens_per_s / h['e2e']:.2f}x whole run  "
                    f"[engine greedy tokens vs transformers: {r.hf_match}]")
        del hf

        # 3. prefill
        for nb in prefill_batches:
            eng.generate([exact_prompt(eng, args.prefill_len, 3)],
                         SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
            r = None
            for attempt in range(args.prefill_reps + args.retries):
                if attempt >= args.prefill_reps and not contended(r):
                    break
                probe = speed_probe()
                rr = run_prefill(eng, nb, args.prefill_len, 1, cost, dtype)
                rr.probe_gflops = probe
                if r is None or rr.seconds < r.seconds:
                    r = rr
            results.append(r)
            log(f"prefill {nb}x{args.prefill_len} {r.tokens_per_s:8.1f} tok/s  {r.ms_per_step:7.1f} ms "
                f"({r.steps} step(s))  other load {r.other_cores:.2f} cores, probe {probe:.0f} GFLOP/s")
        if args.profile and batches:
            profiles[dtype] = profile_decode(eng, prompts, max(batches))
            log(f"\ntorch.profiler, decode steps at B={max(batches)} ({dtype}):\n{profiles[dtype]}")
        del eng
        gc.collect()

    if not args.skip_limits and not args.limits_once:
        log("")
        measure_limits("end")
    peaks, bw = current_limits()
    for r in results:
        if r.flops and r.seconds:
            r.achieved_gflops = r.flops / r.seconds / 1e9
    if peaks:
        for r in results:
            if r.flops:
                name = {torch.float32: "float32", torch.bfloat16: "bfloat16"}.get(DTYPES[r.dtype], "")
                apply_rooflines(r, peaks.get(name, float("nan")), bw)

    # 4./5. summary
    log("\n## Summary\n")
    if peaks:
        log(f"rooflines use: matmul fp32 {peaks['float32'] / 1e9:.0f} GFLOP/s, bf16 "
            f"{peaks['bfloat16'] / 1e9:.0f} GFLOP/s; memory bandwidth {bw / 1e9:.1f} GB/s "
            "(best of the limit measurements)")
    log(f"decode: {args.decode_tokens} timed steps after the prefill step and {args.warmup_steps} "
        f"warm-up steps ({new_tokens} tokens per request), best of {args.repeats} run(s); tok/s = B / "
        "median step. transformers: same prompts, greedy, max_new_tokens = min_new_tokens = "
        f"{new_tokens}, left padding, step = interval between logits-processor calls.\n")
    hdr = ("| dtype | workload | engine tok/s | ms/step | GFLOP/s | % compute roofline "
           "| % bandwidth roofline | transformers tok/s | transformers ms/step "
           "| engine ÷ transformers (steady / whole run) | other load, cores | probe GFLOP/s |")
    log(hdr)
    log("|" + "---|" * (hdr.count("|") - 1))
    for r in results:
        work = (f"decode B={r.batch}" if r.kind == "decode"
                else f"prefill {r.batch}×{r.extra.get('prompt_len', args.prefill_len)}")
        pct_bw = f"{r.pct_bandwidth:.0f}%" if r.bytes and r.bandwidth_roofline_tok_s else "–"
        pct_c = f"{r.pct_compute:.1f}%" if r.compute_roofline_tok_s else "–"
        warn = " ⚠" if contended(r) or (r.hf_other_cores or 0) > QUIET["threshold"] else ""
        if r.hf_tokens_per_s:
            hfcol = f"{r.hf_tokens_per_s:.1f} | {r.hf_ms_per_step:.1f}"
            ratio = (f"{r.tokens_per_s / r.hf_tokens_per_s:.2f}× / "
                     f"{r.e2e_tokens_per_s / r.hf_e2e_tokens_per_s:.2f}×")
            load = f"{r.other_cores:.2f} / {r.hf_other_cores:.2f}"
            probe = f"{r.probe_gflops:.0f} / {r.hf_probe_gflops:.0f}"
        else:
            hfcol, ratio, load, probe = "– | –", "–", f"{r.other_cores:.2f}", f"{r.probe_gflops:.0f}"
        log(f"| {r.dtype} | {work}{warn} | {r.tokens_per_s:.1f} | {r.ms_per_step:.1f} | {r.achieved_gflops:.1f} | "
            f"{pct_c} | {pct_bw} | {hfcol} | {ratio} | {load} | {probe} |")

    if any(contended(r) or (r.hf_other_cores or 0) > QUIET["threshold"] for r in results):
        log(f"\n⚠ = other processes kept > {QUIET['threshold']} cores busy during the kept run "
            "(even after retries): that row's numbers are pessimistic and noisy.")

    # bf16 vs fp32: do the engine's greedy tokens agree with the fp32 reference?
    agreement: dict[str, str] = {}
    for b in batches:
        runs = {r.dtype: r.extra.get("tokens") for r in results if r.kind == "decode" and r.batch == b}
        ref = next((runs[d] for d in ("float32", "fp32") if runs.get(d)), None)
        hf32 = next((r.extra.get("hf_tokens") for r in results if r.kind == "decode" and r.batch == b
                     and DTYPES[r.dtype] is torch.float32 and r.extra.get("hf_tokens")), None)
        for d, toks in runs.items():
            if toks and ref and DTYPES[d] is not torch.float32:
                agreement[f"{d} B={b}"] = prefix_match(toks, ref)
                log(f"engine {d} B={b} greedy tokens vs engine float32: {agreement[f'{d} B={b}']}"
                    + (f"; vs transformers float32: {prefix_match(toks, hf32)}" if hf32 else ""))
    for r in results:
        if r.hf_match:
            log(f"engine {r.dtype} B={r.batch} greedy tokens vs transformers {r.dtype}: {r.hf_match}")

    log("\nGoals:")
    for dtype in dtypes:
        d64 = next((r for r in results if r.dtype == dtype and r.kind == "decode" and r.batch == 64), None)
        d32 = next((r for r in results if r.dtype == dtype and r.kind == "decode" and r.batch == 32
                    and r.hf_tokens_per_s), None)
        noisy = " (UNRELIABLE: other processes were busy during this measurement)"
        if d64 and peaks:
            log(f"  {dtype}: batch-64 decode at {d64.pct_compute:.0f}% of the compute roofline "
                f"(goal >= 30%): {'MET' if d64.pct_compute >= 30 else 'NOT met'}"
                + (noisy if contended(d64) else ""))
        if d32:
            ratio = d32.tokens_per_s / d32.hf_tokens_per_s
            ratio_e2e = d32.e2e_tokens_per_s / d32.hf_e2e_tokens_per_s
            log(f"  {dtype}: batch-32 engine/transformers on one static batch of equal prompts and answer "
                f"lengths: {ratio:.2f}x steady decode, {ratio_e2e:.2f}x whole run (the >= 3x aggregate "
                f"throughput goal is measured on a mixed workload: python -m benchmarks.throughput)"
                + (noisy if contended(d32) or (d32.hf_other_cores or 0) > QUIET["threshold"] else ""))
    hf32 = next((r for r in results if r.kind == "decode" and r.batch == 32 and r.hf_tokens_per_s
                 and DTYPES[r.dtype] is torch.float32), None)
    for dtype in dtypes:
        d32 = next((r for r in results if r.dtype == dtype and r.kind == "decode" and r.batch == 32), None)
        if hf32 and d32 and DTYPES[dtype] is not torch.float32:
            log(f"  {dtype} engine vs transformers float32 (its CPU default) at batch 32: "
                f"{d32.tokens_per_s / hf32.hf_tokens_per_s:.2f}x steady decode, "
                f"{d32.e2e_tokens_per_s / hf32.hf_e2e_tokens_per_s:.2f}x whole run")
    log(f"\ntotal benchmark time {time.perf_counter() - started:.0f}s "
        f"({QUIET['waited']:.0f}s of it waiting for other processes to go quiet)")

    if args.json:
        args.json.write_text(json.dumps({
            "machine": info, "limits": limits, "peak_flops": peaks, "bandwidth_bytes_per_s": bw,
            "cost_model": cost_json, "args": {k: str(v) for k, v in vars(args).items()},
            "results": [asdict(r) for r in results], "profiles": profiles, "agreement": agreement}, indent=2, default=str))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
``$TANDEM_CACHE_DIR`` or ``~/.cache/tandem``). The timed runs are in ``engine_runs.py``, the
summary, agreement and goals in ``engine_report.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.baseline import hf_generate, hf_run, load_hf, prefix_match  # noqa: E402
from benchmarks.engine_report import log_agreement, log_goals, log_summary  # noqa: E402
from benchmarks.engine_runs import (USER_PROMPTS, exact_prompt, make_prompts, profile_decode,  # noqa: E402
                                    run_decode, run_prefill)
from benchmarks.machine import (QUIET, Limits, cache_dir, contended, log, machine_info, parse_ints,  # noqa: E402
                                speed_probe)
from benchmarks.roofline import CostModel, Result, apply_limits  # noqa: E402
from services.engine import EngineConfig, LLMEngine, SamplingParams  # noqa: E402
from services.engine.config import DTYPES  # noqa: E402

# ----------------------------------------------------------------------------------------------
# one dtype: load, decode at each batch size (with the transformers baseline), prefill, profile
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """What one run measures: the command line, parsed and checked once."""

    args: argparse.Namespace
    dtypes: tuple[str, ...]
    batches: tuple[int, ...]
    prefill_batches: tuple[int, ...]
    hf_batches: tuple[int, ...]

    @property
    def new_tokens(self) -> int:
        """Tokens per decode request: the prefill's token, the warm-up steps and the timed steps."""
        return self.args.warmup_steps + self.args.decode_tokens + 1


@dataclass
class Subject:
    """One dtype's engine, its transformers baseline (None when not run), prompts and cost model."""

    dtype: str
    eng: LLMEngine
    hf: object | None
    prompts: list[list[int]]
    cost: CostModel
    pad_id: int


def bench_dtype(plan: Plan, dtype: str) -> tuple[list[Result], dict, str | None]:
    """This dtype's result rows, its cost model and (with --profile) a profiler table."""
    s = load_subject(plan, dtype)
    # warm-up: one small generate so first-call costs (allocator, kernels) are not timed
    s.eng.generate(s.prompts[:2], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    # the transformers baseline runs right after the engine at the same batch size, so that both
    # see the same machine conditions
    rows = [r for b in sorted(set(plan.batches) | set(plan.hf_batches)) if (r := bench_decode(plan, s, b))]
    s.hf = None
    rows += [bench_prefill(plan, s, nb) for nb in plan.prefill_batches]
    profile = None
    if plan.args.profile and plan.batches:
        profile = profile_decode(s.eng, s.prompts, max(plan.batches))
        log(f"\ntorch.profiler, decode steps at B={max(plan.batches)} ({dtype}):\n{profile}")
    return rows, asdict(s.cost), profile


def load_subject(plan: Plan, dtype: str) -> Subject:
    tdt = DTYPES[dtype]
    max_prompt = max(len(p) for p in USER_PROMPTS) * 4 + 64
    budget = max(plan.args.prefill_len * max(plan.prefill_batches or [1]), max(plan.batches) * max_prompt, 2048)
    config = EngineConfig(dtype=dtype, max_num_seqs=max(max(plan.batches), max(plan.prefill_batches or [1])),
                          max_num_batched_tokens=budget, kv_cache_bytes=768 << 20, num_threads=plan.args.threads)
    t = time.perf_counter()
    eng = LLMEngine(config, cache_dir())
    log(f"\n## engine dtype={dtype} (loaded in {time.perf_counter() - t:.1f}s, "
        f"max_num_batched_tokens={budget})")
    s = Subject(dtype, eng, None, make_prompts(eng), CostModel.of(eng.model_config, eng.model, tdt),
                eng.tokenizer.eos_token_id or 0)
    if plan.hf_batches:
        t = time.perf_counter()
        s.hf = load_hf(eng.model_dir, tdt)
        log(f"transformers LlamaForCausalLM loaded in {time.perf_counter() - t:.1f}s")
        hf_generate(s.hf, s.prompts[:2], 4, s.pad_id)  # warm-up
    return s


def bench_decode(plan: Plan, s: Subject, b: int) -> Result | None:
    """Decode at batch ``b``: the engine's and transformers' best runs, as one row (None: neither ran)."""
    r = toks = h = None
    # engine and transformers alternate; each keeps its fastest run. A run during which other
    # processes were busy is repeated (up to --retries more times) after waiting for quiet.
    for attempt in range(plan.args.repeats + plan.args.retries):
        extra = attempt >= plan.args.repeats
        if b in plan.batches and (not extra or contended(r)):
            r, toks = engine_decode_run(plan, s, b, r, toks)
        if s.hf is not None and b in plan.hf_batches and (not extra or contended(h)):
            h = hf_decode_run(plan, s, b, h)
    if r is not None:
        r.extra["tokens"] = toks
        log(f"decode  B={b:<3d} {r.tokens_per_s:8.1f} tok/s  step {r.ms_per_step:6.1f} ms "
            f"(p90 {r.ms_per_step_p90:.1f}; mean-based {r.mean_tokens_per_s:.1f} tok/s; whole run "
            f"{r.e2e_tokens_per_s:.1f} tok/s)  other load {r.other_cores:.2f} cores, "
            f"probe {r.probe_gflops:.0f} GFLOP/s")
    return r if h is None else with_baseline(r, h, toks, s.dtype, b)


def engine_decode_run(plan: Plan, s: Subject, b: int, best: Result | None, best_tokens):
    """One engine decode run; keeps the faster of it and ``best`` (and the best whole-run rate of both)."""
    probe = speed_probe()
    rr, tt = run_decode(s.eng, s.prompts, b, plan.args.warmup_steps, plan.args.decode_tokens, s.cost, s.dtype)
    rr.probe_gflops = probe
    best_e2e = max(rr.e2e_tokens_per_s, best.e2e_tokens_per_s if best else 0.0)
    if best is None or rr.seconds < best.seconds:
        best, best_tokens = rr, tt
    best.e2e_tokens_per_s = best_e2e
    return best, best_tokens


def hf_decode_run(plan: Plan, s: Subject, b: int, best: dict | None) -> dict:
    """One transformers decode run; keeps the faster of it and ``best`` (and the best whole-run rate)."""
    probe = speed_probe()
    hh = hf_run(s.hf, s.prompts, b, plan.new_tokens, s.pad_id, plan.args.warmup_steps)
    hh["probe"] = probe
    best_e2e = max(hh["e2e"], best["e2e"] if best else 0.0)
    if best is None or hh["ms_per_step"] < best["ms_per_step"]:
        best = hh
    best["e2e"] = best_e2e
    return best


def with_baseline(r: Result | None, h: dict, toks, dtype: str, b: int) -> Result:
    """``r`` (made empty when the engine did not run at ``b``) with the transformers columns of ``h``."""
    if r is None:
        r = Result(dtype=dtype, kind="decode", batch=b, tokens_per_s=float("nan"), ms_per_step=float("nan"))
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
    return r


def bench_prefill(plan: Plan, s: Subject, nb: int) -> Result:
    """``nb`` prompts of --prefill-len tokens in one step: the fastest of --prefill-reps runs."""
    length = plan.args.prefill_len
    s.eng.generate([exact_prompt(s.eng, length, 3)], SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
    r = None
    for attempt in range(plan.args.prefill_reps + plan.args.retries):
        if attempt >= plan.args.prefill_reps and not contended(r):
            break
        probe = speed_probe()
        rr = run_prefill(s.eng, nb, length, 1, s.cost, s.dtype)
        rr.probe_gflops = probe
        if r is None or rr.seconds < r.seconds:
            r = rr
    log(f"prefill {nb}x{length} {r.tokens_per_s:8.1f} tok/s  {r.ms_per_step:7.1f} ms "
        f"({r.steps} step(s))  other load {r.other_cores:.2f} cores, probe {probe:.0f} GFLOP/s")
    return r


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    plan = parse_args(argv)
    if plan.args.threads:
        torch.set_num_threads(plan.args.threads)
    QUIET["max_wait"] = plan.args.wait_quiet
    started = time.perf_counter()
    info = machine_info()
    log("# Tandem engine benchmark\n")
    log("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    # 1. machine limits (measured before and after the engine runs; the rooflines use the best)
    limits = Limits()
    if not plan.args.skip_limits:
        limits.measure("start")
    # 2./3. decode and prefill, one engine per dtype
    results, costs, profiles = [], {}, {}
    for dtype in plan.dtypes:
        rows, costs[dtype], profile = bench_dtype(plan, dtype)
        results += rows
        if profile:
            profiles[dtype] = profile
        gc.collect()
    if not plan.args.skip_limits and not plan.args.limits_once:
        log("")
        limits.measure("end")
    peaks, bw = limits.best(plan.args.peak_gflops, plan.args.bandwidth_gbps)
    apply_limits(results, peaks, bw)
    # 4./5. summary
    log_summary(plan.args, plan.new_tokens, results, peaks, bw)
    agreement = log_agreement(plan.batches, results)
    log_goals(plan.dtypes, results, peaks)
    log(f"\ntotal benchmark time {time.perf_counter() - started:.0f}s "
        f"({QUIET['waited']:.0f}s of it waiting for other processes to go quiet)")
    if plan.args.json:
        write_json(plan.args, {"machine": info, "limits": {"runs": limits.runs}, "peak_flops": peaks,
                               "bandwidth_bytes_per_s": bw, "cost_model": costs}, results, profiles, agreement)
    return 0


def write_json(args: argparse.Namespace, context: dict, results: list[Result], profiles: dict[str, str],
               agreement: dict[str, str]) -> None:
    args.json.write_text(json.dumps({
        **context, "args": {k: str(v) for k, v in vars(args).items()},
        "results": [asdict(r) for r in results], "profiles": profiles, "agreement": agreement},
        indent=2, default=str))
    log(f"wrote {args.json}")


def parse_args(argv: list[str] | None) -> Plan:
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
    dtypes = tuple(d for d in args.dtypes.split(",") if d)
    for d in dtypes:
        if d not in DTYPES:
            ap.error(f"unknown dtype {d}")
    return Plan(args, dtypes, tuple(parse_ints(args.batches)), tuple(parse_ints(args.prefill_batches)),
                () if args.skip_transformers else tuple(parse_ints(args.hf_batches)))


if __name__ == "__main__":
    sys.exit(main())

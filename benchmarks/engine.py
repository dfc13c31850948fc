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
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from services.engine import EngineConfig, LLMEngine, SamplingParams  # noqa: E402
from services.engine.config import DTYPES, ModelConfig  # noqa: E402
from services.engine.kv_cache import kv_bytes_per_token  # noqa: E402

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
# machine limits
# ----------------------------------------------------------------------------------------------
def _best(fn, reps: int) -> float:
    fn()  # warm-up (first touch, kernel selection)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure_matmul(dtype: torch.dtype, sizes=(2048, 3072, 4096), reps: int = 3) -> dict:
    """Best GFLOP/s of square ``torch.matmul`` (2·n³ FLOPs) over a few sizes, all threads."""
    g = torch.Generator().manual_seed(0)
    rates = {}
    for n in sizes:
        a = torch.randn(n, n, generator=g).to(dtype)
        b = torch.randn(n, n, generator=g).to(dtype)
        out = torch.empty(n, n, dtype=dtype)
        t = _best(lambda: torch.matmul(a, b, out=out), reps)
        rates[n] = 2 * n ** 3 / t / 1e9
        del a, b, out
    return {"gflops": max(rates.values()), "by_size": rates}


def measure_bandwidth(mib: int = 512, reps: int = 5) -> dict:
    """Memory bandwidth (GB/s, 1e9) over buffers far larger than the L3 cache.

    ``copy`` counts bytes read + bytes written (2 × size; a write-allocate's extra read is not
    counted, so this is a lower bound of the real traffic); ``sum`` counts bytes read; ``add``
    (z = x + y) counts 2 reads + 1 write. The roofline uses the best of the three.
    """
    n = (mib << 20) // 4
    x = torch.ones(n, dtype=torch.float32)
    y = torch.ones(n, dtype=torch.float32)
    z = torch.empty(n, dtype=torch.float32)
    z.fill_(0)  # first touch outside the timed region
    nbytes = n * 4
    copy = 2 * nbytes / _best(lambda: z.copy_(x), reps) / 1e9
    read = nbytes / _best(lambda: x.sum(), reps) / 1e9
    add = 3 * nbytes / _best(lambda: torch.add(x, y, out=z), reps) / 1e9
    del x, y, z
    return {"gbps": max(copy, read, add), "copy": copy, "sum": read, "add": add, "buffer_mib": mib}


# ----------------------------------------------------------------------------------------------
# model cost model (rooflines)
# ----------------------------------------------------------------------------------------------
@dataclass
class CostModel:
    """FLOPs and bytes of one forward of the engine's model (SmolLM2-shaped Llama).

    * ``layer_matmul_params`` = L · (h·(q + 2·kv) + q·h + 3·h·i)  (fused qkv, o, gate_up, down)
    * ``head_params`` = V · h (the lm_head; applied only to rows that are sampled)
    * attention FLOPs for one query row attending to ``c`` cached tokens = 4 · L · H · d · c
      (Q·Kᵀ and P·V, 2 FLOPs per multiply-add each); a causal prompt of n tokens sums c = 1..n.
    """

    layer_matmul_params: int
    head_params: int
    attn_flops_per_ctx: int
    weight_bytes: int          # every parameter once (tied embedding/lm_head counted once)
    kv_bytes_per_token: int

    @classmethod
    def of(cls, mc: ModelConfig, model: torch.nn.Module, dtype: torch.dtype) -> "CostModel":
        per_layer = (mc.hidden_size * (mc.q_size + 2 * mc.kv_size) + mc.q_size * mc.hidden_size
                     + 3 * mc.hidden_size * mc.intermediate_size)
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        return cls(layer_matmul_params=mc.num_layers * per_layer,
                   head_params=mc.vocab_size * mc.hidden_size,
                   attn_flops_per_ctx=4 * mc.num_layers * mc.num_heads * mc.head_dim,
                   weight_bytes=weight_bytes,
                   kv_bytes_per_token=kv_bytes_per_token(mc, dtype))

    def decode_step_flops(self, batch: int, mean_ctx: float) -> float:
        return batch * (2 * (self.layer_matmul_params + self.head_params)
                        + self.attn_flops_per_ctx * mean_ctx)

    def decode_step_bytes(self, batch: int, mean_ctx: float) -> float:
        """Every weight read once per step + each sequence's KV read once (activations ignored)."""
        return self.weight_bytes + batch * mean_ctx * self.kv_bytes_per_token

    def prefill_flops(self, num_prompts: int, length: int) -> float:
        return num_prompts * (2 * self.layer_matmul_params * length + 2 * self.head_params
                              + self.attn_flops_per_ctx * length * (length + 1) / 2)


# ----------------------------------------------------------------------------------------------
# engine runs
# ----------------------------------------------------------------------------------------------
@dataclass
class Result:
    dtype: str
    kind: str                    # "decode" or "prefill"
    batch: int
    tokens_per_s: float          # decode: aggregate generated tok/s over steady steps; prefill: prompt tok/s
    ms_per_step: float           # decode: median step; prefill: the whole prefill
    ms_per_step_p90: float = 0.0
    steps: int = 0
    mean_ctx: float = 0.0
    e2e_tokens_per_s: float = 0.0  # decode run incl. prefill and warm-up: B·max_tokens / wall time
    achieved_gflops: float = 0.0
    compute_roofline_tok_s: float = 0.0
    bandwidth_roofline_tok_s: float = 0.0
    pct_compute: float = 0.0
    pct_bandwidth: float = 0.0
    hf_tokens_per_s: float | None = None      # transformers decode-only rate (see hf_run)
    hf_e2e_tokens_per_s: float | None = None  # transformers whole generate() rate
    hf_match: str | None = None               # greedy tokens identical to transformers' output
    extra: dict = field(default_factory=dict)


def cache_dir() -> Path:
    return Path(os.environ.get("TANDEM_CACHE_DIR") or Path.home() / ".cache" / "tandem")


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
               cost: CostModel, peak_flops: float, bw: float, dtype: str) -> tuple[Result, list[list[int]]]:
    """``batch`` requests of ``warmup + n + 1`` tokens; time the last ``n`` decode steps."""
    max_tokens = warmup + n + 1
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    chosen = [prompts[i % len(prompts)] for i in range(batch)]
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
    decode_steps = [s for s in steps if s[2]]
    timed = decode_steps[warmup:]
    assert all(k == batch for _, k, _ in timed), "a timed decode step did not serve the whole batch"
    secs = [t for t, _, _ in timed]
    tok_s = sum(k for _, k, _ in timed) / sum(secs)
    # context each query attends to in the timed steps: prompt + tokens so far (incl. the new one)
    mean_prompt = statistics.mean(len(p) for p in chosen)
    first = len(decode_steps) - len(timed)
    mean_ctx = mean_prompt + 1 + first + (len(timed) - 1) / 2 + 1
    step_flops = cost.decode_step_flops(batch, mean_ctx)
    step_bytes = cost.decode_step_bytes(batch, mean_ctx)
    mean_step = sum(secs) / len(secs)
    comp_tok_s = batch * peak_flops / step_flops
    bw_tok_s = batch * bw / step_bytes
    res = Result(
        dtype=dtype, kind="decode", batch=batch, tokens_per_s=tok_s,
        ms_per_step=1e3 * statistics.median(secs),
        ms_per_step_p90=1e3 * sorted(secs)[int(0.9 * (len(secs) - 1))],
        steps=len(secs), mean_ctx=mean_ctx, e2e_tokens_per_s=batch * max_tokens / wall,
        achieved_gflops=step_flops / mean_step / 1e9,
        compute_roofline_tok_s=comp_tok_s, bandwidth_roofline_tok_s=bw_tok_s,
        pct_compute=100 * tok_s / comp_tok_s, pct_bandwidth=100 * tok_s / bw_tok_s)
    return res, [tokens[r] for r in ids]


def run_prefill(eng: LLMEngine, num_prompts: int, length: int, reps: int, cost: CostModel,
                peak_flops: float, dtype: str) -> Result:
    """``num_prompts`` prompts of exactly ``length`` tokens, ``max_tokens=1``; best of ``reps``."""
    params = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    times, nsteps = [], 0
    for rep in range(reps):
        t0 = time.perf_counter()
        for i in range(num_prompts):
            eng.add_request(_next_id(f"pre{num_prompts}"), exact_prompt(eng, length, 7 * i + rep), params)
        nsteps = 0
        while eng.has_unfinished():
            eng.step()
            nsteps += 1
        times.append(time.perf_counter() - t0)
    best = min(times)
    flops = cost.prefill_flops(num_prompts, length)
    tok_s = num_prompts * length / best
    comp_tok_s = num_prompts * length * peak_flops / flops
    return Result(dtype=dtype, kind="prefill", batch=num_prompts, tokens_per_s=tok_s,
                  ms_per_step=1e3 * best, ms_per_step_p90=1e3 * max(times), steps=nsteps,
                  mean_ctx=(length + 1) / 2, achieved_gflops=flops / best / 1e9,
                  compute_roofline_tok_s=comp_tok_s, pct_compute=100 * tok_s / comp_tok_s,
                  extra={"prompt_len": length, "reps": reps})


# ----------------------------------------------------------------------------------------------
# transformers baseline
# ----------------------------------------------------------------------------------------------
def load_hf(model_dir: Path, dtype: torch.dtype):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    try:
        model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    except TypeError:  # transformers < 4.56 spells it torch_dtype
        model = LlamaForCausalLM.from_pretrained(str(model_dir), torch_dtype=dtype)
    return model.eval()


def hf_generate(model, prompts: list[list[int]], new_tokens: int, pad_id: int) -> tuple[float, list[list[int]]]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id,
                             temperature=None, top_p=None, top_k=None)
    secs = time.perf_counter() - t
    return secs, out[:, width:].tolist()


def hf_run(model, prompts: list[list[int]], batch: int, new_tokens: int, pad_id: int) -> dict:
    """Whole-``generate`` rate (B·N / T_N) and decode-only rate B·(N−1) / (T_N − T_1)."""
    chosen = [prompts[i % len(prompts)] for i in range(batch)]
    t1 = min(hf_generate(model, chosen, 1, pad_id)[0] for _ in range(2))
    tn, toks = hf_generate(model, chosen, new_tokens, pad_id)
    return {"e2e": batch * new_tokens / tn, "decode": batch * (new_tokens - 1) / max(tn - t1, 1e-9),
            "t1": t1, "tn": tn, "tokens": toks}


def prefix_match(a: list[list[int]], b: list[list[int]]) -> str:
    """'k/n full, mean prefix p%': sequences identical, and the mean length of the common prefix."""
    full, fracs = 0, []
    for x, y in zip(a, b):
        m = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
        full += m == len(x) == len(y)
        fracs.append(m / max(len(x), 1))
    return f"{full}/{len(a)} full, mean prefix {100 * statistics.mean(fracs):.0f}%"


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
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            eng.step()
    while eng.has_unfinished():
        eng.step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def machine_info() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("Model name", "Core(s) per socket", "Thread(s) per core", "L3 cache",
                             "Flags"):
                v = v.strip()
                if k.strip() == "Flags":
                    v = " ".join(f for f in v.split() if f.startswith(("avx512_bf16", "amx", "avx512f")))
                info[k.strip()] = v
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def parse_ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def log(msg: str) -> None:
    print(msg, flush=True)


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
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--profile", action="store_true",
                    help="print a torch.profiler table of decode steps at the largest batch")
    ap.add_argument("--json", type=Path, help="write all results here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
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

    # 1. machine limits
    peaks: dict[str, float] = {}
    limits: dict = {}
    if args.peak_gflops:
        f32, bf16 = (float(x) for x in args.peak_gflops.split(","))
        peaks = {"float32": f32 * 1e9, "bfloat16": bf16 * 1e9}
    elif not args.skip_limits:
        for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            m = measure_matmul(dt)
            limits[f"matmul_{name}"] = m
            peaks[name] = m["gflops"] * 1e9
            log(f"matmul {name}: {m['gflops']:.1f} GFLOP/s (best of "
                + ", ".join(f"n={n}: {r:.0f}" for n, r in m["by_size"].items()) + ")")
    if args.bandwidth_gbps:
        bw = args.bandwidth_gbps * 1e9
    elif not args.skip_limits:
        b = measure_bandwidth()
        limits["bandwidth"] = b
        bw = b["gbps"] * 1e9
        log(f"memory bandwidth: {b['gbps']:.1f} GB/s (copy {b['copy']:.1f}, sum {b['sum']:.1f}, "
            f"add {b['add']:.1f}; {b['buffer_mib']} MiB buffers)")
    else:
        bw = float("nan")
    peaks_by_dtype = {d: peaks.get({torch.float32: "float32", torch.bfloat16: "bfloat16"}.get(t, ""),
                                   float("nan")) for d, t in DTYPES.items()}

    results: list[Result] = []
    profiles: dict[str, str] = {}
    cost_json: dict = {}
    for dtype in dtypes:
        tdt = DTYPES[dtype]
        peak = peaks_by_dtype[dtype]
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
        # warm-up: one small generate so first-call costs (allocator, kernels) are not timed
        eng.generate(prompts[:2], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))

        engine_tokens: dict[int, list[list[int]]] = {}
        for b in batches:
            r, toks = run_decode(eng, prompts, b, args.warmup_steps, args.decode_tokens, cost, peak, bw, dtype)
            engine_tokens[b] = toks
            results.append(r)
            log(f"decode  B={b:<3d} {r.tokens_per_s:8.1f} tok/s  step {r.ms_per_step:6.1f} ms "
                f"(p90 {r.ms_per_step_p90:.1f})  {r.achieved_gflops:6.1f} GFLOP/s  "
                f"{r.pct_compute:5.1f}% of compute roofline, {r.pct_bandwidth:5.1f}% of bandwidth roofline")
        for nb in prefill_batches:
            eng.generate([exact_prompt(eng, args.prefill_len, 3)],
                         SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
            r = run_prefill(eng, nb, args.prefill_len, args.prefill_reps, cost, peak, dtype)
            results.append(r)
            log(f"prefill {nb}x{args.prefill_len} {r.tokens_per_s:8.1f} tok/s  {r.ms_per_step:7.1f} ms "
                f"({r.steps} step(s))  {r.achieved_gflops:6.1f} GFLOP/s  {r.pct_compute:5.1f}% of compute roofline")
        if args.profile and batches:
            profiles[dtype] = profile_decode(eng, prompts, max(batches))
            log(f"\ntorch.profiler, decode steps at B={max(batches)} ({dtype}):\n{profiles[dtype]}")

        if hf_batches:
            model_dir = eng.model_dir
            pad_id = eng.tokenizer.eos_token_id or 0
            new_tokens = args.warmup_steps + args.decode_tokens + 1
            del eng
            gc.collect()
            t = time.perf_counter()
            hf = load_hf(model_dir, tdt)
            log(f"transformers LlamaForCausalLM loaded in {time.perf_counter() - t:.1f}s")
            hf_generate(hf, prompts[:2], 2, pad_id)  # warm-up
            for b in hf_batches:
                h = hf_run(hf, prompts, b, new_tokens, pad_id)
                row = next((r for r in results if r.dtype == dtype and r.kind == "decode" and r.batch == b), None)
                match = (prefix_match(engine_tokens[b], h["tokens"]) if b in engine_tokens else None)
                if row is None:
                    row = Result(dtype=dtype, kind="decode", batch=b, tokens_per_s=float("nan"),
                                 ms_per_step=float("nan"))
                    results.append(row)
                row.hf_tokens_per_s, row.hf_e2e_tokens_per_s, row.hf_match = h["decode"], h["e2e"], match
                ratio = row.tokens_per_s / h["decode"]
                ratio_e2e = (row.e2e_tokens_per_s / h["e2e"]) if row.e2e_tokens_per_s else float("nan")
                log(f"transformers B={b:<3d} decode {h['decode']:8.1f} tok/s, whole generate "
                    f"{h['e2e']:8.1f} tok/s ({new_tokens} new tokens, {h['tn']:.1f}s)  "
                    f"engine/transformers: decode {ratio:.2f}x, end-to-end {ratio_e2e:.2f}x  "
                    f"[greedy tokens vs transformers: {match}]")
            del hf
        else:
            del eng
        gc.collect()

    # cross-dtype agreement is in the hf_match column; summary table
    log("\n## Summary\n")
    log("peak matmul: " + ", ".join(f"{d} {peaks[d] / 1e9:.0f} GFLOP/s" for d in ("float32", "bfloat16")
                                      if d in peaks)
        + f"; memory bandwidth {bw / 1e9:.1f} GB/s")
    log("")
    hdr = ("| dtype | workload | tok/s | ms/step (median) | GFLOP/s | compute roofline tok/s | % compute "
           "| bandwidth roofline tok/s | % bandwidth | transformers tok/s (decode / whole) | engine ÷ transformers (decode / whole) |")
    log(hdr)
    log("|" + "---|" * (hdr.count("|") - 1))
    for r in results:
        work = (f"decode B={r.batch}" if r.kind == "decode"
                else f"prefill {r.batch}×{r.extra.get('prompt_len', args.prefill_len)}")
        bwcol = f"{r.bandwidth_roofline_tok_s:.0f} | {r.pct_bandwidth:.0f}%" if r.kind == "decode" else "– | –"
        if r.hf_tokens_per_s:
            hfcol = f"{r.hf_tokens_per_s:.1f} / {r.hf_e2e_tokens_per_s:.1f}"
            ratio = (f"{r.tokens_per_s / r.hf_tokens_per_s:.2f}× / "
                     f"{r.e2e_tokens_per_s / r.hf_e2e_tokens_per_s:.2f}×")
        else:
            hfcol = ratio = "–"
        log(f"| {r.dtype} | {work} | {r.tokens_per_s:.1f} | {r.ms_per_step:.1f} | {r.achieved_gflops:.1f} | "
            f"{r.compute_roofline_tok_s:.0f} | {r.pct_compute:.0f}% | {bwcol} | {hfcol} | {ratio} |")

    log("\nGoals:")
    for dtype in dtypes:
        d64 = next((r for r in results if r.dtype == dtype and r.kind == "decode" and r.batch == 64), None)
        d32 = next((r for r in results if r.dtype == dtype and r.kind == "decode" and r.batch == 32
                    and r.hf_tokens_per_s), None)
        if d64:
            log(f"  {dtype}: batch-64 decode at {d64.pct_compute:.0f}% of the compute roofline "
                f"(goal ≥ 30%): {'MET' if d64.pct_compute >= 30 else 'NOT met'}")
        if d32:
            ratio = d32.tokens_per_s / d32.hf_tokens_per_s
            ratio_e2e = d32.e2e_tokens_per_s / d32.hf_e2e_tokens_per_s
            log(f"  {dtype}: batch-32 engine/transformers {ratio:.2f}x decode, {ratio_e2e:.2f}x end-to-end "
                f"(goal ≥ 3x): {'MET' if min(ratio, ratio_e2e) >= 3 else 'NOT met'}")
    log(f"\ntotal benchmark time {time.perf_counter() - started:.0f}s")

    if args.json:
        args.json.write_text(json.dumps({
            "machine": info, "limits": limits, "peak_flops": peaks, "bandwidth_bytes_per_s": bw,
            "cost_model": cost_json, "args": {k: str(v) for k, v in vars(args).items()},
            "results": [asdict(r) for r in results], "profiles": profiles}, indent=2, default=str))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

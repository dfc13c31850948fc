"""What ``benchmarks/engine.py`` prints after its runs: the summary table, token agreement, goals."""

from __future__ import annotations

import argparse

import torch

from benchmarks.baseline import prefix_match
from benchmarks.machine import QUIET, contended, log
from benchmarks.roofline import Result
from services.engine.config import DTYPES


def _disturbed(r: Result) -> bool:
    return contended(r) or (r.hf_other_cores or 0) > QUIET["threshold"]


def log_summary(args: argparse.Namespace, new_tokens: int, results: list[Result],
                peaks: dict[str, float], bw: float) -> None:
    """The limits the rooflines use, how decode was timed, and one table row per result."""
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
        log(_table_row(r, args.prefill_len))
    if any(_disturbed(r) for r in results):
        log(f"\n⚠ = other processes kept > {QUIET['threshold']} cores busy during the kept run "
            "(even after retries): that row's numbers are pessimistic and noisy.")


def _table_row(r: Result, prefill_len: int) -> str:
    work = (f"decode B={r.batch}" if r.kind == "decode"
            else f"prefill {r.batch}×{r.extra.get('prompt_len', prefill_len)}")
    pct_bw = f"{r.pct_bandwidth:.0f}%" if r.bytes and r.bandwidth_roofline_tok_s else "–"
    pct_c = f"{r.pct_compute:.1f}%" if r.compute_roofline_tok_s else "–"
    warn = " ⚠" if _disturbed(r) else ""
    if r.hf_tokens_per_s:
        hfcol = f"{r.hf_tokens_per_s:.1f} | {r.hf_ms_per_step:.1f}"
        ratio = (f"{r.tokens_per_s / r.hf_tokens_per_s:.2f}× / "
                 f"{r.e2e_tokens_per_s / r.hf_e2e_tokens_per_s:.2f}×")
        load = f"{r.other_cores:.2f} / {r.hf_other_cores:.2f}"
        probe = f"{r.probe_gflops:.0f} / {r.hf_probe_gflops:.0f}"
    else:
        hfcol, ratio, load, probe = "– | –", "–", f"{r.other_cores:.2f}", f"{r.probe_gflops:.0f}"
    return (f"| {r.dtype} | {work}{warn} | {r.tokens_per_s:.1f} | {r.ms_per_step:.1f} | {r.achieved_gflops:.1f} | "
            f"{pct_c} | {pct_bw} | {hfcol} | {ratio} | {load} | {probe} |")


def _decode(results: list[Result], batch: int, dtype: str | None = None) -> list[Result]:
    return [r for r in results if r.kind == "decode" and r.batch == batch and dtype in (None, r.dtype)]


def log_agreement(batches: tuple[int, ...], results: list[Result]) -> dict[str, str]:
    """Do the engine's non-fp32 greedy tokens agree with its fp32 ones (and transformers')?"""
    agreement: dict[str, str] = {}
    for b in batches:
        runs = {r.dtype: r.extra.get("tokens") for r in _decode(results, b)}
        ref = next((runs[d] for d in ("float32", "fp32") if runs.get(d)), None)
        hf32 = next((r.extra.get("hf_tokens") for r in _decode(results, b)
                     if DTYPES[r.dtype] is torch.float32 and r.extra.get("hf_tokens")), None)
        for d, toks in runs.items():
            if toks and ref and DTYPES[d] is not torch.float32:
                agreement[f"{d} B={b}"] = prefix_match(toks, ref)
                log(f"engine {d} B={b} greedy tokens vs engine float32: {agreement[f'{d} B={b}']}"
                    + (f"; vs transformers float32: {prefix_match(toks, hf32)}" if hf32 else ""))
    for r in results:
        if r.hf_match:
            log(f"engine {r.dtype} B={r.batch} greedy tokens vs transformers {r.dtype}: {r.hf_match}")
    return agreement


def log_goals(dtypes: tuple[str, ...], results: list[Result], peaks: dict[str, float]) -> None:
    """The engine's goals: batch-64 decode vs the compute roofline, batch-32 vs transformers."""
    log("\nGoals:")
    noisy = " (UNRELIABLE: other processes were busy during this measurement)"
    for dtype in dtypes:
        d64 = next(iter(_decode(results, 64, dtype)), None)
        d32 = next((r for r in _decode(results, 32, dtype) if r.hf_tokens_per_s), None)
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
                + (noisy if _disturbed(d32) else ""))
    _log_against_hf_float32(dtypes, results)


def _log_against_hf_float32(dtypes: tuple[str, ...], results: list[Result]) -> None:
    hf32 = next((r for r in _decode(results, 32) if r.hf_tokens_per_s and DTYPES[r.dtype] is torch.float32), None)
    for dtype in dtypes:
        d32 = next(iter(_decode(results, 32, dtype)), None)
        if hf32 and d32 and DTYPES[dtype] is not torch.float32:
            log(f"  {dtype} engine vs transformers float32 (its CPU default) at batch 32: "
                f"{d32.tokens_per_s / hf32.hf_tokens_per_s:.2f}x steady decode, "
                f"{d32.e2e_tokens_per_s / hf32.hf_e2e_tokens_per_s:.2f}x whole run")

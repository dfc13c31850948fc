"""Arguments and entry point of ``tandem bench``: load-test any OpenAI-compatible Chat Completions server.

    tandem bench --base-url http://127.0.0.1:8000/v1 --model SmolLM2-135M-Instruct \\
        --dataset random --input-len 256 --output-len 64 --request-rate 2 --num-requests 100 \\
        --slo ttft=0.5,tpot=0.05

Prints the summary table, writes the JSON (every request's timings) and the PNG plots.
Metric definitions: ``tandem/bench/metrics.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import re
import sys
import time
from pathlib import Path

from .config import DATASETS, SLO, BenchConfig, LoadConfig, WorkloadConfig

RESULTS_DIR = Path("bench-results")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    server = parser.add_argument_group("server")
    server.add_argument("--base-url", required=True, help="ends like the OpenAI SDK's: http://HOST:PORT/v1")
    server.add_argument("--model", required=True, help="the request's model field")
    server.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                        help="sent as a bearer token (default: $OPENAI_API_KEY)")
    server.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=None,
                        help="send ignore_eos: true to force max_tokens outputs "
                             "(default: on for random, off for chat)")
    server.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0: greedy)")
    server.add_argument("--extra-body", type=_json_object, default={},
                        help='JSON object merged into every request body, e.g. \'{"top_k": 1}\'')
    server.add_argument("--timeout", type=float, default=600.0, help="seconds per request")

    load = parser.add_argument_group("load")
    load.add_argument("--request-rate", type=float, default=math.inf,
                      help="open-loop arrivals per second (default inf: all at once)")
    load.add_argument("--burstiness", type=float, default=None,
                      help="gamma shape of the arrival gaps (default 1: Poisson; <1 burstier); "
                           "needs a finite --request-rate")
    load.add_argument("--concurrency", type=int, default=None,
                      help="max requests in flight; alone, a closed loop of N users")
    load.add_argument("--num-requests", type=int, default=None, help="measured requests (default 100)")
    load.add_argument("--duration", type=float, default=None, help="stop sending after S seconds")
    load.add_argument("--warmup", type=int, default=0, help="requests sent first and not measured")
    load.add_argument("--seed", type=int, default=0)

    work = parser.add_argument_group("workload")
    work.add_argument("--dataset", choices=DATASETS, default="random")
    work.add_argument("--input-len", type=int, default=None,
                      help="random: prompt text tokens (approx., default 256)")
    work.add_argument("--output-len", type=int, default=128, help="max_tokens")
    work.add_argument("--range-ratio", type=float, default=None,
                      help="random: lengths uniform in [len*(1-r), len*(1+r)] (default 0)")
    work.add_argument("--dataset-path", type=Path, default=None,
                      help='chat: a JSONL file of {"prompt": ...} (default: the shipped set)')
    work.add_argument("--no-calibrate", action="store_true",
                      help="random: skip the two probes that measure tokens per word")

    out = parser.add_argument_group("results")
    out.add_argument("--slo", type=_slo, default=SLO(), help="goodput SLOs in seconds: ttft=0.5,tpot=0.05,e2e=10")
    out.add_argument("--result-json", type=Path, default=None, help=f"default: {RESULTS_DIR}/<run>.json")
    out.add_argument("--plot-dir", type=Path, default=None, help="default: the JSON's path without .json")
    out.add_argument("--no-plots", action="store_true")
    out.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


RANDOM_ONLY = {"input_len": "--input-len", "range_ratio": "--range-ratio", "no_calibrate": "--no-calibrate"}


def build_config(args: argparse.Namespace) -> BenchConfig:
    """The run's config from parsed arguments (``ValueError`` on a bad combination, including a
    flag that the chosen options would ignore)."""
    if args.dataset != "random":
        given = [flag for name, flag in RANDOM_ONLY.items() if getattr(args, name) not in (None, False)]
        if given:
            raise ValueError(f"{', '.join(given)} only apply to --dataset random")
    if args.burstiness is not None and math.isinf(args.request_rate):
        raise ValueError("--burstiness shapes arrival gaps: it needs a finite --request-rate")
    if args.plot_dir is not None and args.no_plots:
        raise ValueError("--plot-dir and --no-plots contradict each other")
    given = args.num_requests is not None or args.duration is not None
    num_requests = args.num_requests if given else 100
    load = LoadConfig(request_rate=args.request_rate,
                      burstiness=1.0 if args.burstiness is None else args.burstiness,
                      concurrency=args.concurrency, num_requests=num_requests, duration=args.duration,
                      warmup=args.warmup)
    workload = WorkloadConfig(dataset=args.dataset, input_len=256 if args.input_len is None else args.input_len, output_len=args.output_len,
                              range_ratio=args.range_ratio or 0.0, dataset_path=args.dataset_path,
                              calibrate=not args.no_calibrate)
    ignore_eos = args.dataset == "random" if args.ignore_eos is None else args.ignore_eos
    result_json = args.result_json or RESULTS_DIR / f"{_run_name(args)}.json"
    plot_dir = None if args.no_plots else (args.plot_dir or result_json.with_suffix(""))
    return BenchConfig(base_url=args.base_url, model=args.model, load=load, workload=workload,
                       slo=args.slo, seed=args.seed, ignore_eos=ignore_eos, temperature=args.temperature,
                       extra_body=args.extra_body, timeout_s=args.timeout, api_key=args.api_key,
                       result_json=result_json, plot_dir=plot_dir, progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; 0 if any request succeeded, 1 if none did, 2 for bad arguments."""
    try:
        config = build_config(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for noisy in ("httpx", "matplotlib"):   # an INFO line per request; font cache notices
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from . import report
    from .runner import run_bench

    result = asyncio.run(run_bench(config))
    print(report.table(result))
    print(f"results: {report.write_json(result, config.result_json)}", file=sys.stderr)
    if config.plot_dir is not None:
        from .plots import write_plots

        paths = write_plots({config.model: result.records}, config.plot_dir)
        print(f"plots: {', '.join(map(str, paths))}", file=sys.stderr)
    return 0 if result.metrics.completed else 1


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _slo(text: str) -> SLO:
    try:
        return SLO.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run_name(args: argparse.Namespace) -> str:
    load = f"rate{args.request_rate:g}" + (f"-c{args.concurrency}" if args.concurrency else "")
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", args.model)
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{model}-{args.dataset}-{load}"

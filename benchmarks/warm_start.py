"""Warm start of ``tandem up``: seconds to ``/ready`` with the converted weights cached.

Starts ``tandem up`` from each checkout in turn (this one, and ``--before PATH``, e.g. ``git
worktree add /tmp/before a5f77a8``), the order flipped every round, each checkout with its own
persistent data dir; reads the "ready in" line ``tandem up`` prints and each worker's "ready
after … (engine load …)" line; stops it with Ctrl-C and waits for it to exit. One start first
(not counted) makes sure the model is converted. Prints each round, the medians, the CPU, and the
other processes' load in the second before each start (``/proc/stat``)::

    python -m benchmarks.warm_start --rounds 6 --before /tmp/before
    python -m benchmarks.warm_start --rounds 4 --before /tmp/before --env TANDEM_DTYPE=bfloat16

The goal (#17) is ≤ 10 s on a 2-cpu machine; docs/benchmarks.md §7 has the runs.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.machine import CpuMeter, machine_info

READY = re.compile(r"tandem up: ready in ([\d.]+) s \((.*)\)")
WORKER = re.compile(r"(\w+) worker \S+ ready after ([\d.]+) s \(engine load ([\d.]+) s")


class UpStack:
    """``tandem up`` from one checkout, read until its ready line (``ready`` is the match, or None
    if it said "not ready" or ``timeout_s`` passed); its later output is drained; ``stop`` is Ctrl-C."""

    def __init__(self, tree: Path, data_dir: Path, port: int, env: dict[str, str], timeout_s: float):
        self.tree = tree
        self.proc = subprocess.Popen([sys.executable, "-m", "tandem.cli", "up", "--port", str(port)], cwd=tree,
                                     env={**os.environ, **env, "TANDEM_DATA_DIR": str(data_dir)},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        deadline = time.monotonic() + timeout_s
        try:
            for line in self.proc.stdout:
                self.lines.append(line)
                if READY.search(line) or "not ready" in line or time.monotonic() > deadline:
                    break
        except BaseException:
            self.stop()
            raise
        self.ready = READY.search(self.text)
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()   # a full pipe would block it

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def require_ready(self) -> re.Match:
        if not self.ready:
            self.stop()
            raise RuntimeError(f"{self.tree}: tandem up did not report ready:\n{self.text[-3000:]}")
        return self.ready

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def start_once(tree: Path, data_dir: Path, port: int, env: dict[str, str], timeout_s: float) -> dict:
    """One ``tandem up`` from ``tree``: its timing lines, then Ctrl-C."""
    with CpuMeter() as meter:          # other processes' load just before this start
        time.sleep(1.0)
    stack = UpStack(tree, data_dir, port, env, timeout_s)
    ready = stack.require_ready()
    stack.stop()
    workers = {m.group(1): (float(m.group(2)), float(m.group(3))) for m in WORKER.finditer(stack.text)}
    return {"ready_s": float(ready.group(1)), "stages": ready.group(2), "workers": workers,
            "other_cores": meter.other_cores}


def side_by_side_args(ap: argparse.ArgumentParser, rounds: int, port: int, timeout_s: float) -> None:
    """The options of a benchmark that starts ``tandem up`` from this checkout and ``--before``."""
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--before", type=Path, default=None, help="checkout of the code to compare")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for every start (e.g. TANDEM_DTYPE=bfloat16)")
    ap.add_argument("--port", type=int, default=port)
    ap.add_argument("--timeout-s", type=float, default=timeout_s)


def checkouts(args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, str]]:
    """``{"before": …, "after": this checkout}`` and the environment of every start; prints the machine."""
    env = {"TANDEM_KV_CACHE_GB": "1", **dict(e.split("=", 1) for e in args.env)}
    trees = {"after": Path(__file__).resolve().parents[1]}
    if args.before:
        trees = {"before": args.before.resolve(), **trees}
    info = machine_info()
    print(f"machine: {info.get('Model name', '?')}, {info['cpus']} cpus, flags {info.get('Flags', '')}; "
          f"torch {info['torch']}; commit {info.get('commit', '?')}; env {env}", flush=True)
    return trees, env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    side_by_side_args(ap, rounds=4, port=8391, timeout_s=180)
    args = ap.parse_args(argv)
    trees, env = checkouts(args)
    with tempfile.TemporaryDirectory(prefix="warm-start-") as tmp:
        data = {name: Path(tmp) / name for name in trees}
        for name, tree in trees.items():          # converts the model if needed; not counted
            start_once(tree, data[name], args.port, env, args.timeout_s)
        results: dict[str, list[dict]] = {name: [] for name in trees}
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for name in order:
                res = start_once(trees[name], data[name], args.port, env, args.timeout_s)
                results[name].append(res)
                workers = ", ".join(f"{role} {after:.1f} s (engine {engine:.1f} s)"
                                    for role, (after, engine) in sorted(res["workers"].items()))
                print(f"round {r + 1} {name}: ready in {res['ready_s']:.1f} s ({res['stages']}); "
                      f"{workers}; other processes {res['other_cores']:.2f} cores", flush=True)
    print()
    print("| code | ready in (s), each round | median |")
    print("|---|---|---|")
    for name, rs in results.items():
        seconds = [x["ready_s"] for x in rs]
        print(f"| {name} | {', '.join(f'{s:.1f}' for s in seconds)} | {statistics.median(seconds):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Goodput under several SLOs, recomputed from ``tandem bench`` result JSONs.

    python -m benchmarks.goodput bench-results/.../rates --slo tpot=0.1 --slo ttft=5

For every ``<point>/<deployment>-r*.json`` under the folder, prints requests/s meeting each SLO
(definitions as in tandem/bench/metrics.py: a request meets an SLO when every bound holds; TPOT is
not defined for one-token outputs, which meet any TPOT bound).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from tandem.bench.config import SLO


def meets(r: dict, slo: SLO) -> bool:
    """``tandem.bench.metrics.meets`` on a request as the result JSON stores it (its ttft, tpot
    and e2e already computed; tpot is None for a one-token output)."""
    return r["success"] and all(bound is None or r[name] is None or r[name] <= bound
                                for name, bound in asdict(slo).items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--slo", action="append", required=True, help="e.g. tpot=0.1,ttft=5 (seconds)")
    args = p.parse_args()
    try:
        slos = [SLO.parse(s) for s in args.slo]   # unknown names and bounds <= 0 are refused
    except ValueError as e:
        p.error(str(e))
    print("| point | deployment | req/s | " + " | ".join(f"goodput {s}" for s in args.slo) + " |")
    print("|---|---|---:|" + "---:|" * len(slos))
    for path in sorted(Path(args.folder).glob("*/*-r*.json"), key=lambda q: (float(q.parent.name.split("=")[-1])
                                                                             if "=" in q.parent.name else 0, q.name)):
        d = json.loads(path.read_text())
        duration, reqs = d["metrics"]["duration"], d["requests"]
        goodputs = [sum(meets(r, slo) for r in reqs) / duration for slo in slos]
        print(f"| {path.parent.name} | {path.stem.rsplit('-r', 1)[0]} | {d['metrics']['request_throughput']:.2f} | "
              + " | ".join(f"{g:.2f}" for g in goodputs) + " |")


if __name__ == "__main__":
    main()

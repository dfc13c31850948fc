"""Does scraping ``/metrics`` slow the request path? The same load with and without a scraper.

Against a running stack (``tandem up``), alternating rounds run ``tandem bench``'s load with no
scraper, then with one that GETs the gateway's ``/metrics`` and every worker's (addresses from
the registry) ``--scrape-hz`` times a second each. Reports median TTFT / ITL / e2e per mode (the
median over rounds of each round's median) and the scrape latency.

    .venv/bin/tandem up &    # then:
    .venv/bin/python -m benchmarks.metrics_scrape --base-url http://127.0.0.1:8000/v1 \\
        --redis-url redis://127.0.0.1:PORT --rounds 3 --num-requests 24 --concurrency 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
import urllib.request

import redis

from services.registry import WorkerRegistry
from tandem.bench.cli import add_arguments, build_config
from tandem.bench.runner import run_bench


class Scraper(threading.Thread):
    """GETs every URL ``hz`` times a second until stopped; keeps each scrape's seconds."""

    def __init__(self, urls: list[str], hz: float):
        super().__init__(daemon=True)
        self.urls, self.period, self.seconds = urls, 1.0 / hz, []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            for url in self.urls:
                start = time.perf_counter()
                with urllib.request.urlopen(url, timeout=10) as r:
                    r.read()
                self.seconds.append(time.perf_counter() - start)


def metrics_urls(base_url: str, redis_url: str) -> list[str]:
    workers = WorkerRegistry(redis.Redis.from_url(redis_url, socket_timeout=2)).live()
    return [base_url.removesuffix("/v1") + "/metrics"] + [
        f"http://{w.metrics_address}/metrics" for w in workers if w.metrics_address]


def one_round(bench_args: argparse.Namespace, scraper: Scraper | None) -> dict[str, float]:
    if scraper:
        scraper.start()
    try:
        result = asyncio.run(run_bench(build_config(bench_args)))
    finally:
        if scraper:
            scraper.stopped.set()
            scraper.join()
    m = result.metrics
    return {"ttft": m.ttft.median, "itl": m.itl.median, "e2e": m.e2e.median, "completed": m.completed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--redis-url", required=True, help="the stack's Redis (workers' metrics addresses)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scrape-hz", type=float, default=10.0, help="scrapes per second of each process")
    parser.add_argument("--json", default=None, help="write the per-round numbers here")
    args = parser.parse_args()
    args.no_plots, args.no_progress = True, True
    urls = metrics_urls(args.base_url, args.redis_url)
    rounds: dict[str, list[dict]] = {"off": [], "on": []}
    scrapes: list[float] = []
    for _ in range(args.rounds):
        rounds["off"].append(one_round(args, None))
        scraper = Scraper(urls, args.scrape_hz)
        rounds["on"].append(one_round(args, scraper))
        scrapes += scraper.seconds
    summary = {mode: {k: statistics.median(r[k] for r in rs) for k in ("ttft", "itl", "e2e")}
               for mode, rs in rounds.items()}
    print(f"processes scraped: {len(urls)} at {args.scrape_hz:g} Hz each; {len(scrapes)} scrapes, "
          f"median {statistics.median(scrapes) * 1000:.2f} ms, max {max(scrapes) * 1000:.1f} ms")
    for mode, s in summary.items():
        print(f"scraper {mode:3}: TTFT {s['ttft'] * 1000:7.1f} ms  ITL {s['itl'] * 1000:6.1f} ms  "
              f"e2e {s['e2e']:6.2f} s  (median of {args.rounds} round medians)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": rounds, "summary": summary, "scrape_seconds": scrapes}, f, indent=1)


if __name__ == "__main__":
    main()

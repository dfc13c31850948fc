"""Does a Redis full of stored responses slow the gateway? Before/after, side by side, one run.

Before this change every routed request SCANned Redis for worker keys, and Redis also holds every
stored response for 30 days, so routing cost grew with the stored responses. This benchmark first times one registry read as each version does it per
request (median of many, in this process: the old SCAN + MGET against the new script call over
two keys), then runs
the same ``tandem up`` deployment against two Redis servers — one empty, one holding ``--stored``
responses (a record and its input items each, like the real ones) — with the current code and,
given ``--before PATH`` (a checkout of an older commit, e.g. ``git worktree add /tmp/before
4c23173``), with that code too. It uses ``benchmarks.serving_experiments`` (deployments
alternate, never up together, same seeded requests) for two workloads:

- overhead: concurrency 1, one output token, short prompts — TTFT is the per-request cost of the
  gateway (routing, validation, template) plus a short prefill;
- streaming: concurrency 16, 32 output tokens — TTFT and inter-token latency under load.

    python -m benchmarks.gateway_overhead --stored 100000 --before /tmp/before --out OUT

The machine's limits and load are printed with every ``tandem bench`` result (its JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import serving_experiments  # noqa: E402
from tandem.redis_server import EmbeddedRedis  # noqa: E402

WORKLOADS = {
    "overhead": ["--dataset", "random", "--input-len", "16", "--output-len", "1", "--concurrency",
                 "1", "--num-requests", "60", "--warmup", "3"],
    "streaming": ["--dataset", "random", "--input-len", "64", "--output-len", "32", "--concurrency",
                  "16", "--num-requests", "48", "--warmup", "4"],
}


def fill(redis: EmbeddedRedis, stored: int) -> None:
    """``stored`` responses as the gateway stores them: a record and its items, with a TTL."""
    client = redis.client(timeout=30)
    record = '{"id":"%s","object":"response","status":"completed","output":[]}'
    items = '[{"type":"message","id":"msg_1","role":"user","content":[{"type":"input_text","text":"hi"}]}]'
    with client.pipeline(transaction=False) as pipe:
        for i in range(stored):
            key = f"tandem:resp:{{resp_{i:012d}}}"
            pipe.set(key, record % f"resp_{i:012d}", ex=30 * 86400)
            pipe.set(f"{key}:items", items, ex=30 * 86400)
            if i % 5000 == 4999:
                pipe.execute()
        pipe.execute()
    print(f"redis {redis.url}: {client.dbsize()} keys", flush=True)


def time_reads(read, n: int = 200) -> float:
    """Median milliseconds of ``read()`` over ``n`` calls."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        read()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def registry_reads(redis: dict[str, EmbeddedRedis], before: Path | None) -> None:
    """One routed request's registry read, per version and Redis, with two live workers."""
    import redis.asyncio as aioredis

    from gateway.routing import RegistryView
    from services.registry import WorkerInfo, WorkerRegistry

    old = _load("before_registry", before / "services" / "registry.py") if before else None
    for label, server in redis.items():
        info = [WorkerInfo(f"w{i}", role, "127.0.0.1:1", 1, 8, 0, 0, 10, 10)
                for i, role in enumerate(("prefill", "decode"))]
        loop = asyncio.new_event_loop()
        view = RegistryView(aioredis.Redis.from_url(server.url), refresh_s=1e-9)
        for w in info:
            WorkerRegistry(server.client()).publish(w)
        row = {"after": time_reads(lambda: loop.run_until_complete(view._read()))}
        if old is not None:
            registry = old.WorkerRegistry(server.client())
            for w in info:
                registry.publish(old.WorkerInfo(**w.__dict__))
            row["before"] = time_reads(registry.live)
        loop.close()
        print(f"registry read, redis {label}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in row.items()),
              flush=True)


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module          # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def deployments(code: dict[str, Path | None], redis: dict[str, EmbeddedRedis]) -> list[str]:
    """``--deploy`` arguments: each code version against each Redis, on its own port."""
    argv, port = [], 8710
    for version, path in code.items():
        for label, server in redis.items():
            # ``python -m`` puts the working directory first on sys.path: run in the checkout.
            env = f"-C {path or Path.cwd()} TANDEM_REDIS_URL={server.url} TANDEM_KV_CACHE_GB=0.5"
            argv += ["--deploy", f"{version}-{label}", f"http://127.0.0.1:{port}/v1",
                     f"env {env} {sys.executable} -m tandem.cli up --port {port}"]
            port += 1
    return argv


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stored", type=int, default=100_000)
    ap.add_argument("--before", type=Path, default=None, help="checkout of the code to compare")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--registry-only", action="store_true", help="only the registry read timing")
    ap.add_argument("--out", type=Path, default=Path("bench-results") / time.strftime("gw-%Y%m%d-%H%M"))
    args = ap.parse_args(argv)
    code = {"after": None, **({"before": args.before.resolve()} if args.before else {})}
    with tempfile.TemporaryDirectory() as tmp, \
            EmbeddedRedis(Path(tmp) / "empty") as empty, EmbeddedRedis(Path(tmp) / "full") as full:
        fill(full, args.stored)
        redis = {"0": empty, f"{args.stored // 1000}k": full}
        registry_reads(redis, code.get("before"))
        if args.registry_only:
            return 0
        for name, workload in WORKLOADS.items():
            print(f"== {name}", flush=True)
            serving_experiments.main([*deployments(code, redis), "--rounds", str(args.rounds),
                                      "--out", str(args.out / name), "--",
                                      "--model", "SmolLM2-135M-Instruct", "--no-progress",
                                      *workload])
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TANDEM_KV_CACHE_GB", "0.5")
    raise SystemExit(main())

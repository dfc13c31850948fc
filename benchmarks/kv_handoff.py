"""KV handoff cost against a running disaggregated Tandem: bytes and seconds per request by prompt length.

    python -m benchmarks.kv_handoff --base-url http://127.0.0.1:8000/v1 [--lengths 32,128,512,1024,2048]

Each request is non-streaming with ``max_tokens=2`` (so its KV crosses once); the gateway's
``x-tandem-kv-bytes`` / ``x-tandem-kv-transfer-seconds`` headers (start it with ``TANDEM_DEBUG_HEADERS=1``) carry what the decode worker
measured (SendKv call → verified KV in its cache, both checksums included). The machine's memory
bandwidth is measured in the same run (a 512 MiB tensor copy, read + write bytes counted).
``benchmarks/kv_transfer.py`` measures the channel alone, without workers or a gateway.
"""

from __future__ import annotations

import argparse
import json
import statistics

import httpx
import numpy as np

from benchmarks.machine import measure_bandwidth
from tandem.bench.workload import random_words


def measure(client: httpx.Client, model: str, words: int, repeats: int) -> dict:
    text = random_words(words, np.random.default_rng(words))
    rows = []
    for _ in range(repeats):
        r = client.post("/chat/completions", json={"model": model, "max_tokens": 2, "temperature": 0,
                                                   "messages": [{"role": "user", "content": text}]})
        r.raise_for_status()
        if int(r.headers["x-tandem-kv-bytes"]) == 0:   # the first token ended it: no KV moved
            continue
        rows.append((r.json()["usage"]["prompt_tokens"], int(r.headers["x-tandem-kv-bytes"]),
                     float(r.headers["x-tandem-kv-transfer-seconds"]), r.json()["usage"]["prefill_time"]))
    if not rows:
        raise RuntimeError(f"no KV moved for a {words}-word prompt (the first token ended every request)")
    seconds = statistics.median(row[2] for row in rows)
    return {"prompt_tokens": rows[0][0], "kv_bytes": rows[0][1], "transfer_ms": 1000 * seconds,
            "transfer_gbps": rows[0][1] / seconds / 1e9, "ttft_ms": 1000 * statistics.median(r[3] for r in rows),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--lengths", default="32,128,512,1024,2048", help="prompt lengths in words")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default="")
    args = p.parse_args()
    bandwidth = measure_bandwidth()["copy"]
    with httpx.Client(base_url=args.base_url, timeout=300) as client:
        measure(client, args.model, 16, 1)                                   # warm-up, pairing
        rows = [measure(client, args.model, int(n), args.repeats) for n in args.lengths.split(",")]
    print(f"memory bandwidth (copy, read+write): {bandwidth:.1f} GB/s")
    print("| prompt tokens | KV bytes | transfer ms | transfer GB/s | % of memory bw | TTFT (prefill_time) ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['prompt_tokens']} | {r['kv_bytes']:,} | {r['transfer_ms']:.1f} | {r['transfer_gbps']:.2f} "
              f"| {100 * r['transfer_gbps'] / bandwidth:.1f}% | {r['ttft_ms']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"memory_bandwidth_gbps": bandwidth, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

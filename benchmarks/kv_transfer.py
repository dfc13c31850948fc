"""Checksum and transfer throughput of the KV channel on this machine, without workers.

    python -m benchmarks.kv_transfer [--tokens 455] [--dtype float32] [--repeats 10] [--device cpu]

The default KV is SmolLM2-135M's (30 layers, 3 KV heads of 64) for 455 tokens: about 21 MB in
float32. This process is the decode end (store + rank 1); a spawned process is the prefill end.
A transfer is timed at the receiver from posting ``recv`` to holding verified KV, so it includes
the sender's checksum, the header, the payload and the receiver's checksum, like SendKv does.
``benchmarks/kv_handoff.py`` measures the same handoff through a running Tandem, per prompt length.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import torch

from benchmarks.machine import best_seconds
from services.transfer import KvChannel, KvStoreServer, checksum
from services.transfer.header import DTYPES

_KEY = "bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=455)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    shape = (30, 2, args.tokens, 3, 64)
    kv = torch.randn(shape).to(DTYPES[args.dtype]).to(args.device)
    mb = kv.numel() * kv.element_size() / 1e6
    for algo in ("crc32", "wsum64"):
        seconds = best_seconds(lambda: checksum(kv, algo), args.repeats)
        print(f"checksum {algo:7s} {mb:7.1f} MB on {kv.device}: {mb / seconds:8.0f} MB/s")
    print(f"transfer {mb:7.1f} MB: " + _transfer(shape, args.dtype, args.device, args.repeats, mb))


def _transfer(shape: tuple[int, ...], dtype: str, device: str, repeats: int, mb: float) -> str:
    with KvStoreServer("127.0.0.1") as server:
        sender = mp.get_context("spawn").Process(
            target=_send, args=(server.port, shape, dtype, device, repeats + 1), daemon=True)
        sender.start()
        try:
            with KvChannel.connect("127.0.0.1", server.port, _KEY, 1, device, timeout_s=60) as channel:
                times = []
                for i in range(repeats + 1):   # the first one warms up
                    start = time.perf_counter()
                    channel.recv(f"bench-{i}", shape, DTYPES[dtype])
                    times.append(time.perf_counter() - start)
                median, best = statistics.median(times[1:]), min(times[1:])
                summary = (f"{channel.backend}, median {median * 1e3:.1f} ms = {mb / median:.0f} MB/s, "
                           f"best {mb / best:.0f} MB/s")
        finally:
            sender.join(30)
            if sender.is_alive():
                sender.kill()
    return summary


def _send(port: int, shape: tuple[int, ...], dtype: str, device: str, count: int) -> None:
    kv = torch.randn(shape).to(DTYPES[dtype]).to(device)
    with KvChannel.connect("127.0.0.1", port, _KEY, 0, device, timeout_s=60) as channel:
        for i in range(count):
            channel.send(f"bench-{i}", kv)


if __name__ == "__main__":
    main()

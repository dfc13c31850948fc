"""Decode attention variants over a paged KV cache, per layer, at mixed context lengths.

Compares the engine's decode attention (gather whole blocks, then SDPA) with ``matmul → softmax →
matmul`` on the same layout and on a ``[kv_head, slot, head_dim]`` layout. SmolLM2 shapes: 3 KV
heads of 64, 3 query heads per KV head, 16-slot blocks, fp32, a 65,536-slot cache, blocks drawn at
random. Prints the median time per layer of two groups (11 rows of 1,008 tokens of context, 21
rows of 256) and the largest difference from the engine's output::

    python -m benchmarks.decode_attention [--threads 1,2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from services.engine.attention import DecodeGroup, decode_group, gather_blocks  # noqa: E402

BS, KVH, D, G, SLOTS, SCALE = 16, 3, 64, 3, 65536, 0.125


def make(n: int, ctx: int, gen: torch.Generator):
    nb = -(-ctx // BS)
    blocks = torch.randint(0, SLOTS // BS, (n, nb), generator=gen)
    mask = torch.ones(n, 1, 1, nb * BS, dtype=torch.bool)
    mask[..., ctx - 7:] = False              # the last block is partly used
    return torch.randn(n, KVH * G, D, generator=gen), blocks, mask


def engine_sdpa(kc, vc, q, blocks, mask):
    """The engine's own decode attention (``services.engine.attention.decode_group``)."""
    return decode_group(q, kc, vc, DecodeGroup(0, q.shape[0], blocks, mask), BS, SCALE)


def matmul_same_layout(kc, vc, q, blocks, mask):
    n = q.shape[0]
    k = gather_blocks(kc, blocks, BS).transpose(1, 2)
    v = gather_blocks(vc, blocks, BS).transpose(1, 2)
    s = (torch.matmul(q.view(n, KVH, G, D), k.transpose(-1, -2)) * SCALE).masked_fill(~mask, float("-inf"))
    return torch.matmul(s.softmax(-1), v).reshape(n, -1, D)


def matmul_head_major(kh, vh, q, blocks, mask):
    n, nb = blocks.shape
    k = kh.view(KVH, -1, BS, D).index_select(1, blocks.reshape(-1)).view(KVH, n, nb * BS, D)
    v = vh.view(KVH, -1, BS, D).index_select(1, blocks.reshape(-1)).view(KVH, n, nb * BS, D)
    s = torch.matmul(q.view(n, KVH, G, D).transpose(0, 1), k.transpose(-1, -2)) * SCALE
    s = s.masked_fill(~mask.view(1, n, 1, -1), float("-inf"))
    return torch.matmul(s.softmax(-1), v).transpose(0, 1).reshape(n, -1, D)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="2,1", help="torch thread counts to try (default: %(default)s)")
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    kc, vc = torch.randn(SLOTS, KVH, D, generator=gen), torch.randn(SLOTS, KVH, D, generator=gen)
    kh, vh = kc.transpose(0, 1).contiguous(), vc.transpose(0, 1).contiguous()
    groups = [make(11, 1008, gen), make(21, 256, gen)]
    variants = {"engine: block gather + SDPA": lambda *g: engine_sdpa(kc, vc, *g),
                "block gather + matmul/softmax/matmul": lambda *g: matmul_same_layout(kc, vc, *g),
                "[kv_head, slot, d] layout + matmul/softmax/matmul": lambda *g: matmul_head_major(kh, vh, *g)}
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        ref = [engine_sdpa(kc, vc, *g) for g in groups]
        for name, fn in variants.items():
            diff = max(float((fn(*g) - r).abs().max()) for g, r in zip(groups, ref))
            times = []
            for _ in range(args.reps):
                t = time.perf_counter()
                for g in groups:
                    fn(*g)
                times.append(time.perf_counter() - t)
            times.sort()
            print(f"threads={threads}  {name:50s} {1e3 * times[len(times) // 2]:7.3f} ms/layer  "
                  f"max |diff| {diff:.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

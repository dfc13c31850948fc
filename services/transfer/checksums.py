"""Payload checksums, named in the KV header so the receiver recomputes the sender's algorithm.

- ``crc32``: zlib's CRC-32 over the raw bytes, for CPU tensors (gloo). Detects every error burst up
  to 32 bits. Several GB/s on one core; zlib releases the GIL while it runs.
- ``wsum64``: the sum over the payload's int32 words of ``word * (index + 1)``, wrapped to int64,
  computed where the tensor lives so a CUDA payload (NCCL) never bounces through the host. The
  position weights catch swapped or shifted words that a plain sum misses. Integer addition is
  exact, so CPU and CUDA get the same value.

Both read the tensor's bytes, so any dtype works and the value does not depend on the shape.
"""

from __future__ import annotations

import zlib

import torch

ALGOS = ("crc32", "wsum64")
# wsum64 works chunk by chunk to bound its int64 temporaries: small chunks stay in the CPU's cache
# (larger ones ran 10-50x slower here), large ones keep CUDA kernel launches few.
_CHUNK_WORDS = {"cpu": 1 << 16, "cuda": 1 << 22}


def algo_for(device: torch.device) -> str:
    """The algorithm a sender on ``device`` uses: no host copy on either backend."""
    return "crc32" if device.type == "cpu" else "wsum64"


def checksum(t: torch.Tensor, algo: str | None = None) -> tuple[str, int]:
    """``(algo, value)`` of a contiguous tensor's bytes; ``algo`` defaults to ``algo_for(t.device)``.

    ``crc32`` of a CUDA tensor copies it to the host first (correct, slow; senders never ask for it).
    """
    algo = algo or algo_for(t.device)
    data = as_bytes(t)
    if algo == "crc32":
        return algo, zlib.crc32(data.cpu().numpy())
    if algo == "wsum64":
        return algo, _wsum64(data)
    raise ValueError(f"unknown checksum algorithm {algo!r}; known: {', '.join(ALGOS)}")


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view of a contiguous tensor (shares its memory; writes go through)."""
    if not t.is_contiguous():
        raise ValueError("KV tensors must be contiguous")
    return t.reshape(-1).view(torch.uint8)


def _wsum64(data: torch.Tensor) -> int:
    whole = data.numel() // 4 * 4
    words = data[:whole].view(torch.int32)
    total = torch.zeros((), dtype=torch.int64, device=data.device)
    chunk = _CHUNK_WORDS.get(data.device.type, _CHUNK_WORDS["cuda"])
    for start in range(0, words.numel(), chunk):
        total += _weighted_sum(words[start:start + chunk], start)
    total += _weighted_sum(data[whole:], words.numel())   # 0-3 trailing bytes, weighted after the words
    return int(total.item())


def _weighted_sum(values: torch.Tensor, start: int) -> torch.Tensor:
    weights = torch.arange(start + 1, start + 1 + values.numel(), dtype=torch.int64, device=values.device)
    return (values.to(torch.int64) * weights).sum()

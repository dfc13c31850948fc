"""The paged KV cache tensor and the export/import of one request's KV.

Layout: ``kv[layer, 0|1, slot, kv_head, head_dim]`` with ``slot = block * block_size + offset``;
K at index 0, V at 1. A request's KV lives in the blocks of its block table, in order, so its first
``n`` tokens are ``slots_for(block_table, range(n))``. Export gathers those slots into one
contiguous ``[layers, 2, n, kv_heads, head_dim]`` tensor; import scatters such a tensor into freshly
allocated blocks of another cache with the same model shape.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import threading
import time

import torch

from .config import ModelConfig

log = logging.getLogger(__name__)


def kv_bytes_per_token(model: ModelConfig, dtype: torch.dtype) -> int:
    return model.num_layers * 2 * model.kv_size * dtype.itemsize


def zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero tensor; on the CPU its pages are zeroed by the kernel when first written, not here.

    ``torch.zeros`` writes every byte at once (~0.45 s for a 1 GiB cache, while the worker starts);
    numpy's zeros come from ``calloc``, which maps fresh zero pages for a large block (``populate``
    commits them once the worker serves). Never ``torch.empty``: a stale NaN in an unused slot
    would turn a masked attention weight's 0 × NaN into NaN.
    """
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    import numpy as np

    nbytes = math.prod(shape) * dtype.itemsize
    raw = torch.from_numpy(np.zeros(nbytes + 64, dtype=np.uint8))
    start = -raw.data_ptr() % 64       # as torch aligns its own allocations
    return raw[start:start + nbytes].view(dtype).view(shape)


MADV_POPULATE_WRITE = 23     # Linux >= 5.14


def populate(t: torch.Tensor) -> bool:
    """Back every page of the CPU tensor ``t`` with memory now, its contents unchanged
    (``madvise(MADV_POPULATE_WRITE)``: safe while other threads write into it). False where the
    kernel lacks it. So a memory limit too small for the KV cache shows right after start, not
    under the first heavy load."""
    page = os.sysconf("SC_PAGE_SIZE")
    begin = t.data_ptr() // page * page
    end = t.data_ptr() + t.numel() * t.element_size()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return libc.madvise(begin, end - begin, MADV_POPULATE_WRITE) == 0


class KVCache:
    def __init__(self, model: ModelConfig, num_blocks: int, block_size: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu"):
        self.block_size = block_size
        self.num_blocks = num_blocks
        shape = (model.num_layers, 2, num_blocks * block_size, model.num_kv_heads, model.head_dim)
        self.kv = zeros(shape, dtype, torch.device(device))

    def commit_memory(self) -> threading.Thread | None:
        """On the CPU: ``populate`` the cache in a daemon thread at the lowest priority (a worker
        calls it once it serves; ~0.4 s of kernel time per GiB, off the start's critical path)."""
        if self.kv.device.type != "cpu":
            return None

        def run():
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            started = time.monotonic()
            if populate(self.kv):
                log.info("KV cache memory committed (%.2f GiB in %.2f s)",
                         self.kv.numel() * self.kv.element_size() / 2**30, time.monotonic() - started)
            else:
                log.info("KV cache pages are committed as they are first written (madvise: %s)",
                         os.strerror(ctypes.get_errno()))

        thread = threading.Thread(target=run, name="kv-commit", daemon=True)
        thread.start()
        return thread

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.kv[index, 0], self.kv[index, 1]

    def slot_ids(self, block_table: list[int], start: int, end: int) -> list[int]:
        """Cache slots of token positions ``[start, end)`` of a sequence with ``block_table``."""
        bs = self.block_size
        return [block_table[p // bs] * bs + p % bs for p in range(start, end)]

    def slots_for(self, block_table: list[int], start: int, end: int) -> torch.Tensor:
        return torch.tensor(self.slot_ids(block_table, start, end), device=self.kv.device)

    def export(self, block_table: list[int], num_tokens: int) -> torch.Tensor:
        """A contiguous copy of the first ``num_tokens`` tokens' KV: ``[L, 2, n, kv_heads, head_dim]``."""
        return self.kv.index_select(2, self.slots_for(block_table, 0, num_tokens))

    def import_(self, block_table: list[int], kv: torch.Tensor, start: int = 0) -> None:
        """Write an exported KV tensor into the blocks of ``block_table`` (already allocated) as the
        sequence's tokens from ``start`` on."""
        expected = (self.kv.shape[0], 2, kv.shape[2], *self.kv.shape[3:])
        if tuple(kv.shape) != expected or kv.dtype != self.kv.dtype:
            raise ValueError(f"KV shape/dtype {tuple(kv.shape)}/{kv.dtype} does not match cache "
                             f"{expected}/{self.kv.dtype}")
        slots = self.slots_for(block_table, start, start + kv.shape[2])
        self.kv.index_copy_(2, slots, kv.to(self.kv.device))

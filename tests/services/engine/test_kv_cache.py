"""KVCache: slot arithmetic and the export/import round trip of one request's KV (no model)."""

import os

import pytest
import torch

from services.engine.config import ModelConfig
from services.engine.kv_cache import KVCache, populate, zeros

MODEL = ModelConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_layers=2, num_heads=2,
                    num_kv_heads=2, head_dim=4, rope_theta=1e4, rms_norm_eps=1e-5,
                    max_position_embeddings=64, tie_word_embeddings=True)
BLOCK = 4


def filled(num_blocks: int, seed: int) -> KVCache:
    cache = KVCache(MODEL, num_blocks, BLOCK, torch.float32)
    cache.kv.copy_(torch.randn(cache.kv.shape, generator=torch.Generator().manual_seed(seed)))
    return cache


def test_slot_ids_follow_the_block_table():
    cache = KVCache(MODEL, 6, BLOCK, torch.float32)
    assert cache.slot_ids([4, 1, 3], 2, 7) == [18, 19, 4, 5, 6]
    assert cache.slots_for([2], 0, 3).tolist() == [8, 9, 10]


def test_export_gathers_the_first_tokens_in_order():
    cache = filled(6, seed=0)
    kv = cache.export([4, 1, 3], 10)
    assert kv.shape == (2, 2, 10, 2, 4)
    assert torch.equal(kv, cache.kv[:, :, cache.slot_ids([4, 1, 3], 0, 10)])
    assert kv.is_contiguous() and kv.data_ptr() != cache.kv.data_ptr()


def test_import_writes_an_export_into_other_blocks_of_another_cache_and_nothing_else():
    source, target = filled(6, seed=1), KVCache(MODEL, 5, BLOCK, torch.float32)
    kv = source.export([4, 1, 3], 10)
    target.import_([0, 3, 2], kv)
    assert torch.equal(target.export([0, 3, 2], 10), kv)
    written = set(target.slot_ids([0, 3, 2], 0, 10))
    untouched = [s for s in range(5 * BLOCK) if s not in written]
    assert not target.kv[:, :, untouched].any()


@pytest.mark.parametrize("kv", [torch.zeros(2, 2, 3, 2, 5), torch.zeros(1, 2, 3, 2, 4),
                                torch.zeros(2, 2, 3, 2, 4, dtype=torch.bfloat16)])
def test_import_refuses_a_kv_of_another_shape_or_dtype(kv):
    with pytest.raises(ValueError, match="does not match"):
        KVCache(MODEL, 2, BLOCK, torch.float32).import_([0], kv)


def test_cpu_cache_memory_is_committed_without_changing_its_contents():
    """``zeros`` leaves the pages to the kernel; ``populate`` backs them all, keeping what was
    written (the engine may write while the worker's commit thread runs)."""
    def resident_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    t = zeros((64, 1024, 1024), torch.float32, torch.device("cpu"))     # 256 MiB
    assert t.data_ptr() % 64 == 0 and not t.any()
    t[5, 7, 9] = 3.0
    before = resident_mib()
    assert populate(t)
    assert resident_mib() - before > 200
    assert float(t.sum()) == 3.0 and float(t[5, 7, 9]) == 3.0

"""Paged attention against a naive reference, on hand-made caches (no model).

The reference attends each query row to an explicit list of cache slots, one head at a time, with
query head ``h`` reading KV head ``h // (heads // kv_heads)``.
"""

import math

import pytest
import torch

from services.engine.attention import (AttentionMetadata, DecodeGroup, PrefillSpan, decode_group, gather,
                                       gather_blocks, paged_attention)

BLOCK, HEADS, KV_HEADS, DIM = 4, 4, 2, 8
SCALE = DIM ** -0.5


def reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: list[int]) -> torch.Tensor:
    """One query row ``q: [HEADS, DIM]`` attending to the cache ``slots``: ``[HEADS, DIM]``."""
    out = torch.empty_like(q)
    for h in range(HEADS):
        kv = h // (HEADS // KV_HEADS)
        scores = torch.stack([q[h] @ k_cache[s, kv] for s in slots]) * SCALE
        weights = torch.softmax(scores, dim=0)
        out[h] = sum(w * v_cache[s, kv] for w, s in zip(weights, slots))
    return out


def cache(num_blocks: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (num_blocks * BLOCK, KV_HEADS, DIM)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def slots_of(block_table: list[int], n: int) -> list[int]:
    return [block_table[p // BLOCK] * BLOCK + p % BLOCK for p in range(n)]


def test_gather_blocks_copies_each_rows_blocks_in_table_order():
    k, _ = cache(6)
    blocks = torch.tensor([[4, 1], [0, 5]])
    got = gather_blocks(k, blocks, BLOCK)
    assert got.shape == (2, 2 * BLOCK, KV_HEADS, DIM)
    for row, table in enumerate(blocks.tolist()):
        assert torch.equal(got[row], k[slots_of(table, 2 * BLOCK)])


def test_gather_takes_any_shape_of_slots():
    k, _ = cache(3)
    slots = torch.tensor([[5, 0, 11], [2, 2, 7]])
    assert torch.equal(gather(k, slots), k[slots])


def decode_case(tables: list[list[int]], contexts: list[int], seed: int = 1):
    """A decode group over ``tables`` padded to the widest, masked past each row's context."""
    width = max(len(t) for t in tables)
    blocks = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    pos = torch.arange(width * BLOCK)
    mask = (pos[None, :] < torch.tensor(contexts)[:, None])[:, None, None, :]
    q = torch.randn(len(tables), HEADS, DIM, generator=torch.Generator().manual_seed(seed))
    return q, DecodeGroup(0, len(tables), blocks, mask)


def test_a_decode_group_with_padded_contexts_matches_the_reference():
    k, v = cache(8)
    tables, contexts = [[3, 6, 1], [5, 2], [7]], [11, 6, 3]
    q, group = decode_case(tables, contexts)
    out = decode_group(q, k, v, group, BLOCK, SCALE)
    for row, (table, n) in enumerate(zip(tables, contexts)):
        torch.testing.assert_close(out[row], reference(q[row], k, v, slots_of(table, n)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_additive_mask_gives_the_same_bits_as_the_boolean_one(dtype):
    """The runner builds the additive mask SDPA would make of a boolean one; nothing may change."""
    k, v = (t.to(dtype) for t in cache(8))
    q, group = decode_case([[3, 6, 1], [5, 2], [7]], [11, 6, 3])
    additive = torch.zeros(group.mask.shape, dtype=dtype).masked_fill_(~group.mask, float("-inf"))
    q = q.to(dtype)
    assert torch.equal(decode_group(q, k, v, group, BLOCK, SCALE),
                       decode_group(q, k, v, DecodeGroup(0, 3, group.blocks, additive), BLOCK, SCALE))


def test_a_decode_group_without_a_mask_reads_every_slot_of_its_blocks():
    k, v = cache(4)
    q, group = decode_case([[2, 0], [1, 3]], [8, 8])
    out = decode_group(q, k, v, DecodeGroup(0, 2, group.blocks, None), BLOCK, SCALE)
    torch.testing.assert_close(out[1], reference(q[1], k, v, slots_of([1, 3], 8)))


def causal_reference(q, k_cache, v_cache, table: list[int], start: int) -> torch.Tensor:
    """Chunk rows at positions ``start..``: row ``i`` attends to positions ``0..start + i``."""
    return torch.stack([reference(q[i], k_cache, v_cache, slots_of(table, start + i + 1))
                        for i in range(q.shape[0])])


@pytest.mark.parametrize("cached", [0, 5])
def test_a_prefill_chunk_attends_causally_to_itself_and_its_cached_context(cached):
    """``cached`` tokens already in the cache, then a chunk of 6 new tokens written by the call."""
    k_cache, v_cache = cache(6)
    table, length = [4, 0, 2], 6
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(length, h, DIM, generator=g) for h in (HEADS, KV_HEADS, KV_HEADS))
    new_slots = torch.tensor(slots_of(table, cached + length)[cached:])
    context = torch.tensor(slots_of(table, cached + length)) if cached else None
    meta = AttentionMetadata(new_slots, BLOCK, (), (PrefillSpan(0, length, cached + length, context),))
    out = paged_attention(q, k, v, k_cache, v_cache, meta, SCALE)
    assert torch.equal(k_cache[new_slots], k) and torch.equal(v_cache[new_slots], v)
    torch.testing.assert_close(out, causal_reference(q, k_cache, v_cache, table, cached))


@pytest.mark.parametrize("cached", [0, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_attention_runs_on_the_fused_kernel(cached, dtype):
    """With only SDPA's flash (fused, tiled) CPU kernel allowed, prefill still runs: it never falls
    back to the math kernel, which materializes each [len, ctx] score matrix (8x slower at 2k)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    k_cache, v_cache = (c.to(dtype) for c in cache(6))
    table, length = [4, 0, 2], 6
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(length, h, DIM, generator=g).to(dtype) for h in (HEADS, KV_HEADS, KV_HEADS))
    new_slots = torch.tensor(slots_of(table, cached + length)[cached:])
    context = torch.tensor(slots_of(table, cached + length)) if cached else None
    meta = AttentionMetadata(new_slots, BLOCK, (), (PrefillSpan(0, length, cached + length, context),))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = paged_attention(q, k, v, k_cache, v_cache, meta, SCALE)
    expected = causal_reference(q.float(), k_cache.float(), v_cache.float(), table, cached)
    torch.testing.assert_close(out.float(), expected, **({} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}))


def test_one_step_mixes_decode_groups_and_prefill_chunks_in_token_order():
    """Rows: two decode groups (2 + 1 queries), then a whole prompt of 3, then a chunk of 2 after 4 cached."""
    k_cache, v_cache = cache(12)
    decode_tables, decode_ctx = [[1, 2], [3], [4]], [7, 4, 2]     # each query is its context's last token
    prompt_table, chunk_table = [5], [6, 7]
    g = torch.Generator().manual_seed(3)
    t = 3 + 3 + 2
    q, k, v = (torch.randn(t, h, DIM, generator=g) for h in (HEADS, KV_HEADS, KV_HEADS))
    new = ([slots_of(tb, n)[-1] for tb, n in zip(decode_tables, decode_ctx)]
           + slots_of(prompt_table, 3) + slots_of(chunk_table, 6)[4:])
    groups = (decode_case(decode_tables[:2], decode_ctx[:2])[1],
              DecodeGroup(2, 3, torch.tensor([[4]]), (torch.arange(BLOCK) < 2)[None, None, None, :]))
    spans = (PrefillSpan(3, 3, 3, None), PrefillSpan(6, 2, 6, torch.tensor(slots_of(chunk_table, 6))))
    out = paged_attention(q, k, v, k_cache, v_cache, AttentionMetadata(torch.tensor(new), BLOCK, groups, spans),
                          SCALE)
    for row, (table, n) in enumerate(zip(decode_tables, decode_ctx)):
        torch.testing.assert_close(out[row], reference(q[row], k_cache, v_cache, slots_of(table, n)))
    torch.testing.assert_close(out[3:6], causal_reference(q[3:6], k_cache, v_cache, prompt_table, 0))
    torch.testing.assert_close(out[6:], causal_reference(q[6:], k_cache, v_cache, chunk_table, 4))


def test_reference_is_plain_softmax_attention():
    """Sanity check of the reference itself on one head pair: uniform keys give the mean of values."""
    k, v = torch.zeros(3, KV_HEADS, DIM), torch.arange(3 * KV_HEADS * DIM, dtype=torch.float32).view(3, KV_HEADS, DIM)
    out = reference(torch.randn(HEADS, DIM), k, v, [0, 1, 2])
    assert math.isclose(out[0, 0].item(), v[:, 0, 0].mean().item(), rel_tol=1e-6)

"""Prefix caching on hand-made sequences: keys, reference counts, LRU eviction, accounting."""

import random

from services.engine.block_manager import BlockManager
from services.engine.config import EngineConfig
from services.engine.prefix_cache import PrefixCache, block_key, root_key
from services.engine.scheduler import Scheduler
from services.engine.sequence import SamplingParams, Sequence

BS = 4


def seq(rid, tokens, max_tokens=10):
    return Sequence(rid, list(tokens), SamplingParams(), max_tokens)


def computed(bm, s):
    """Give ``s`` blocks for all its tokens and pretend the model computed them."""
    hits = bm.match_prefix(s)
    bm.take_prefix(s, hits)
    bm.grow(s.block_table, s.num_tokens)
    bm.cache_full_blocks(s, len(hits) * BS, s.num_tokens)
    return hits


def test_keys_chain_parent_and_tokens_and_model():
    cache = PrefixCache(BS, "model-a|float32")
    a = cache.keys(seq("a", [1, 2, 3, 4, 5, 6, 7, 8, 9]), 2)
    assert len(a) == 2 and a[0] == block_key(root_key("model-a|float32"), [1, 2, 3, 4])
    assert a[1] == block_key(a[0], [5, 6, 7, 8])
    b = cache.keys(seq("b", [0, 2, 3, 4, 5, 6, 7, 8]), 2)
    assert b[0] != a[0] and b[1] != a[1]                    # same tokens, different parent
    other = PrefixCache(BS, "model-a|torch.bfloat16").keys(seq("c", [1, 2, 3, 4]), 1)
    assert other[0] != a[0]                                  # dtype (or model) changes every key


def test_shared_prefix_is_shared_and_ref_counted():
    bm = BlockManager(8, BS)
    a = seq("a", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])           # 2 full blocks + a partial one
    assert computed(bm, a) == []
    b = seq("b", [1, 2, 3, 4, 5, 6, 7, 8, 20, 21])
    assert computed(bm, b) == a.block_table[:2]
    assert b.block_table[2] != a.block_table[2]              # the partial block is never shared
    assert bm.num_used == 4 and bm.num_free == 4
    bm.free(a.block_table)
    assert bm.num_used == 3                                  # shared blocks still held by b
    bm.free(b.block_table)
    assert bm.num_used == 0 and bm.num_free == 8
    assert bm.stats().cached_blocks == 2 and bm.stats().hits == 8 and bm.stats().queries == 20


def test_hits_stop_before_the_last_token():
    bm = BlockManager(8, BS)
    a = seq("a", range(1, 9))                                # exactly 2 full blocks
    computed(bm, a)
    bm.free(a.block_table)
    again = bm.match_prefix(seq("b", range(1, 9)))
    assert len(again) == 1                                   # last block recomputed: a token to sample
    assert len(bm.match_prefix(seq("c", range(1, 10)))) == 2


def test_released_blocks_are_evicted_least_recently_used_first():
    bm = BlockManager(4, BS)
    a, b = seq("a", range(1, 9)), seq("b", range(11, 19))   # 2 full blocks each
    computed(bm, a)
    computed(bm, b)
    a_blocks, b_blocks = list(a.block_table), list(b.block_table)
    bm.free(a.block_table)
    bm.free(b.block_table)
    assert bm.num_free == 4 and bm.stats().cached_blocks == 4
    t = []
    bm.grow(t, 3 * BS)             # free list is empty: evict a's tail, a's head, then b's tail
    assert t == [a_blocks[1], a_blocks[0], b_blocks[1]]
    assert bm.stats().evictions == 3 and bm.stats().cached_blocks == 1
    assert bm.match_prefix(seq("b2", range(11, 20))) == [b_blocks[0]]


def test_free_list_is_used_before_any_cached_block():
    bm = BlockManager(4, BS)
    a = seq("a", range(1, 9))
    computed(bm, a)
    bm.free(a.block_table)
    t = []
    bm.grow(t, 2 * BS)
    assert bm.stats().evictions == 0 and bm.stats().cached_blocks == 2
    assert len(bm.match_prefix(seq("a2", range(1, 10)))) == 2


def test_a_hit_on_a_released_block_takes_it_off_the_evictable_list():
    bm = BlockManager(3, BS)
    a = seq("a", range(1, 9))
    computed(bm, a)
    bm.free(a.block_table)
    b = seq("b", list(range(1, 9)) + [50])
    hits = bm.match_prefix(b)
    assert bm.can_admit(b, hits)                             # 2 hits + 1 new block = 3
    assert not bm.can_admit(seq("c", range(100, 113)), [])   # 4 blocks never fit
    bm.take_prefix(b, hits)
    assert bm.num_free == 1
    bm.grow(b.block_table, b.num_tokens)
    assert bm.num_free == 0 and bm.stats().evictions == 0


def test_duplicate_computation_stays_private():
    bm = BlockManager(8, BS)
    a, b = seq("a", range(1, 6)), seq("b", range(1, 6))
    for s in (a, b):                                         # admitted together: neither hits
        bm.take_prefix(s, bm.match_prefix(s))
        bm.grow(s.block_table, s.num_tokens)
    for s in (a, b):
        bm.cache_full_blocks(s, 0, s.num_tokens)
    assert bm.stats().cached_blocks == 1 and bm.match_prefix(seq("c", range(1, 7))) == a.block_table[:1]
    bm.free(b.block_table)
    bm.free(a.block_table)
    assert bm.num_free == 8 and bm.stats().cached_blocks == 1


def test_off_switch_caches_nothing():
    bm = BlockManager(8, BS, enable_caching=False)
    a = seq("a", range(1, 10))
    computed(bm, a)
    bm.free(a.block_table)
    assert computed(bm, seq("b", range(1, 10))) == []
    assert bm.stats() == bm.stats().__class__()               # all counters zero


def test_accounting_after_churn_every_block_free_cached_or_used():
    rng = random.Random(0)
    bm = BlockManager(24, BS)
    live = []
    for step in range(400):
        if live and (rng.random() < 0.4 or bm.num_free < 6):
            bm.free(live.pop(rng.randrange(len(live))).block_table)
        else:
            prefix = [rng.randrange(3)] * rng.choice([0, 4, 8, 12])   # a few shared prefixes
            s = seq(f"s{step}", prefix + [rng.randrange(1000) for _ in range(rng.randrange(1, 9))])
            hits = bm.match_prefix(s)
            if bm.can_admit(s, hits):
                computed_hits = computed(bm, s)
                assert computed_hits == hits
                live.append(s)
        used = {b for s in live for b in s.block_table}
        assert set(bm._ref) == used
        assert sum(bm._ref.values()) == sum(len(s.block_table) for s in live)
        everywhere = list(bm._free) + list(bm.cache._evictable) + list(bm._ref)
        assert sorted(everywhere) == list(range(24))         # each block in exactly one place
    assert bm.stats().hits > 0 and bm.stats().evictions > 0
    for s in live:
        bm.free(s.block_table)
    assert bm.num_free == 24 and bm.num_used == 0


def make_scheduler(num_blocks=16, **cfg):
    return Scheduler(EngineConfig(block_size=BS, **cfg), BlockManager(num_blocks, BS))


def run_to_first_token(sched, token=7):
    while True:
        out = sched.schedule()
        sched.mark_computed(out)
        done = [s.seq for s in out.scheduled if s.samples]
        for s in done:
            s.record_token(token, 0.0)
        if done:
            return out


def test_scheduler_computes_only_the_uncached_suffix():
    sched = make_scheduler()
    a = seq("a", range(1, 11))
    sched.add(a)
    run_to_first_token(sched)
    sched.finish(a, "stop")
    b = seq("b", list(range(1, 11)) + [99, 98])
    sched.add(b)
    out = sched.schedule()
    assert [(s.start, s.num_tokens) for s in out.scheduled] == [(8, 4)]
    assert b.num_cached_tokens == 8


def test_scheduler_recomputes_the_last_block_of_a_fully_cached_prompt():
    sched = make_scheduler(max_num_batched_tokens=4)
    a = seq("a", range(1, 9))
    sched.add(a)
    run_to_first_token(sched)
    first_block = a.block_table[0]
    sched.finish(a, "stop")
    again = seq("again", range(1, 9))
    sched.add(again)
    out = sched.schedule()
    assert [(s.start, s.num_tokens, s.samples) for s in out.scheduled] == [(4, 4, True)]
    assert again.block_table[0] == first_block and again.num_cached_tokens == 4


def test_preempted_sequence_finds_its_blocks_again():
    sched = make_scheduler(num_blocks=4)
    a, b = seq("a", range(1, 9)), seq("b", range(21, 29))     # 2 blocks each: the cache is full
    sched.add(a)
    sched.add(b)
    run_to_first_token(sched)
    out = sched.schedule()                                    # a needs a 3rd block: b preempted
    assert [s.seq.request_id for s in out.scheduled] == ["a"] and b.num_preemptions == 1
    sched.mark_computed(out)
    sched.finish(a, "stop")
    out = sched.schedule()            # a's new block evicted b's tail; b's head block is found
    assert [(s.seq.request_id, s.start, s.num_tokens) for s in out.scheduled] == [("b", 4, 5)]
    assert b.num_cached_tokens == 0                           # counted at first admission only

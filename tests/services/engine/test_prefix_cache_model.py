"""Prefix caching on the real model: the same tokens with the cache on as off, and honest counts."""

import pytest
import torch

from services.engine import EngineConfig, LLMEngine, SamplingParams
from services.engine.kv_cache import kv_bytes_per_token

pytestmark = pytest.mark.slow

BS = 16
GREEDY = SamplingParams(max_tokens=20, temperature=0)
SEEDED = SamplingParams(max_tokens=20, temperature=0.9, top_p=0.95, seed=11)
SYSTEM = ("Marigold is a terse assistant for a lighthouse keeper's logbook. It answers in one or two "
          "sentences, never uses lists, and mentions the weather only when asked. ") * 3
QUESTIONS = ["What should I check first at dusk?", "And if the lamp flickers?", "How often is the lens cleaned?",
             "Who do I call in a storm?", "What goes in the morning entry?", "Is fog worse than rain?"]


def engine_with(settings, **cfg):
    return LLMEngine(EngineConfig(**{"kv_cache_bytes": 64 << 20, **cfg}), settings.cache_dir)


@pytest.fixture(scope="module")
def uncached(settings):
    return engine_with(settings, enable_prefix_caching=False)


@pytest.fixture(scope="module")
def chunked(settings):
    return engine_with(settings, max_num_batched_tokens=40)


def expected_cached(prompt, earlier):
    """Full blocks of ``prompt`` that some earlier computed token list already covered."""
    best = 0
    for tokens in earlier:
        n = next((i for i, (a, b) in enumerate(zip(prompt, tokens)) if a != b), min(len(prompt), len(tokens)))
        best = max(best, n)
    return min(best, len(prompt) - 1) // BS * BS


def converse(eng, system, params, turns):
    """Run a conversation turn by turn; return each turn's (prompt, completion)."""
    messages, out = [{"role": "system", "content": system}], []
    for q in turns:
        messages.append({"role": "user", "content": q})
        prompt = eng.tokenizer.apply_chat_template(messages)
        [c] = eng.generate([prompt], params)
        messages.append({"role": "assistant", "content": c.text})
        out.append((prompt, c))
    return out


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
@pytest.mark.parametrize("which", ["engine", "chunked"])
def test_conversation_turns_match_the_uncached_engine(request, uncached, params, which):
    eng = request.getfixturevalue(which)
    system = f"Log {which}-{params.temperature}. " + SYSTEM     # unique: nothing cached before turn 1
    want = converse(uncached, system, params, QUESTIONS[:3])
    got = converse(eng, system, params, QUESTIONS[:3])
    assert [c.token_ids for _, c in got] == [c.token_ids for _, c in want]
    computed = []
    for prompt, c in got:
        assert c.cached_tokens == expected_cached(prompt, computed)
        computed.append(prompt + c.token_ids[:-1])
    assert got[0][1].cached_tokens == 0 and all(c.cached_tokens > 100 for _, c in got[1:])
    assert all(c.cached_tokens == 0 for _, c in want)


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_shared_system_prompt_in_one_batch_matches_uncached_and_shares_blocks(engine, uncached, params):
    prompts = [engine.tokenizer.apply_chat_template([{"role": "system", "content": f"Batch {params.seed}. " + SYSTEM},
                                                     {"role": "user", "content": q}]) for q in QUESTIONS]
    want = [c.token_ids for c in uncached.generate(prompts, params)]
    got, cached, max_shared = {i: [] for i in range(len(prompts))}, {}, 0
    pending = list(enumerate(prompts))
    while pending or engine.has_unfinished():      # one arrival per step: later ones hit running ones
        if pending:
            i, p = pending.pop(0)
            engine.add_request(f"sys-{i}", p, params)
        for out in engine.step():
            got[int(out.request_id[4:])] += out.new_token_ids
            cached[out.request_id] = out.cached_tokens
        max_shared = max([max_shared, *engine.blocks._ref.values()])
    assert [got[i] for i in range(len(prompts))] == want
    assert max_shared >= 2                          # one block in several running block tables
    assert cached["sys-0"] == 0 and all(cached[f"sys-{i}"] >= 48 for i in range(1, len(prompts)))
    assert engine.blocks.num_free == engine.blocks.num_blocks


def test_preemption_with_a_shared_prefix_under_a_tiny_cache(settings, uncached):
    per_block = kv_bytes_per_token(uncached.model_config, torch.float32) * BS
    # 12 blocks of 16: three ~37-token prompts sharing their first block, 40 tokens generated each.
    small = engine_with(settings, kv_cache_bytes=12 * per_block)
    system = "Be brief. Answer as the lighthouse keeper of Marigold Point would."
    prompts = [small.tokenizer.apply_chat_template([{"role": "system", "content": system},
                                                    {"role": "user", "content": q}]) for q in QUESTIONS[:3]]
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    want = [c.token_ids for c in uncached.generate(prompts, params)]
    got, preempted = {i: [] for i in range(3)}, 0
    pending = list(enumerate(prompts))
    while pending or small.has_unfinished():
        if pending:
            i, p = pending.pop(0)
            small.add_request(f"pre-{i}", p, params)
        for out in small.step():
            got[int(out.request_id[4:])] += out.new_token_ids
        preempted = max(preempted, sum(s.num_preemptions for s in small.scheduler.waiting))
    assert preempted > 0
    assert [got[i] for i in range(3)] == want
    stats = small.prefix_cache_stats()
    assert stats.hits > 0 and stats.queries > sum(map(len, prompts))   # re-admission looked again
    assert small.blocks.num_free == small.blocks.num_blocks


def test_prefill_only_blocks_stay_cached_for_the_follow_up(engine):
    prompt = engine.chat_prompt("Describe the keeper's morning routine. " * 6)
    engine.add_request("held-1", prompt, GREEDY, prefill_only=True)
    while engine.has_unfinished():
        engine.step()
    assert engine.blocks.num_free == engine.blocks.num_blocks   # copied out, blocks released
    engine.take_held("held-1")
    [again] = engine.generate([prompt + [42]], GREEDY)
    assert again.cached_tokens == len(prompt) // BS * BS


def test_off_switch_counts_nothing(uncached):
    stats = uncached.prefix_cache_stats()
    assert stats.queries == stats.hits == stats.cached_blocks == stats.evictions == 0


def test_imported_kv_is_cached_on_the_decode_side(engine, chunked):
    prompt = engine.chat_prompt("Write the keeper's evening log entry. " * 5)
    params = SamplingParams(max_tokens=6, temperature=0)
    engine.add_request("imp-1", prompt, params, prefill_only=True)
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    [first] = [o for o in outs if o.request_id == "imp-1"]
    chunked.adopt("imp-1", prompt, params, first.new_token_ids[0])
    assert chunked.reserve_kv("imp-1") == 0
    chunked.import_kv("imp-1", engine.take_held("imp-1"))
    while chunked.has_unfinished():
        chunked.step()
    [follow_up] = chunked.generate([prompt + [42]], GREEDY)
    assert follow_up.cached_tokens == len(prompt) // BS * BS

"""Engine-level P/D handoff: one engine prefills and holds, another adopts and decodes."""

import pytest

from services.engine import EngineConfig, LLMEngine, SamplingParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def decoder(settings):
    return LLMEngine(EngineConfig(kv_cache_bytes=256 << 20), settings.cache_dir)


def prefill(engine, rid, prompt, params):
    engine.add_request(rid, prompt, params, prefill_only=True)
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    [out] = [o for o in outs if o.request_id == rid]
    return out


def decode(engine, rid):
    tokens = []
    while engine.has_unfinished():
        for out in engine.step():
            if out.request_id == rid:
                tokens += out.new_token_ids
    return tokens


@pytest.mark.parametrize("params", [SamplingParams(max_tokens=20, temperature=0),
                                    SamplingParams(max_tokens=20, temperature=0.9, seed=5)])
def test_handoff_matches_colocated_generation(engine, decoder, params):
    prompt = engine.chat_prompt("What is the capital of France?")
    [want] = engine.generate([prompt], params)
    first = prefill(engine, "h1", prompt, params)
    assert first.kv_held and first.finished and first.finish_reason is None
    assert engine.blocks.num_free == engine.blocks.num_blocks      # copied out, blocks already free
    kv = engine.take_held("h1")
    assert tuple(kv.shape) == engine.kv_shape(len(prompt))
    assert not engine.abort("h1")                                  # taken: nothing left here
    adopted = decoder.adopt("h1", prompt, params, first.new_token_ids[0])
    assert not adopted.finished and adopted.new_token_ids == first.new_token_ids
    start = decoder.reserve_kv("h1")      # the second case finds the first one's blocks cached
    assert start % decoder.blocks.block_size == 0 and start < len(prompt)
    decoder.import_kv("h1", kv[:, :, start:].contiguous(), start)
    rest = decode(decoder, "h1")
    assert first.new_token_ids + rest == want.token_ids
    assert decoder.blocks.num_free == decoder.blocks.num_blocks


def handoff(prefiller, decoder, rid, prompt, params):
    """One request through both engines, moving only the KV the decoder lacks."""
    first = prefill(prefiller, rid, prompt, params)
    decoder.adopt(rid, prompt, params, first.new_token_ids[0])
    start = decoder.reserve_kv(rid)
    kv = prefiller.take_held(rid)
    decoder.import_kv(rid, kv[:, :, start:].contiguous(), start)
    return first, start, first.new_token_ids + decode(decoder, rid)


def test_a_follow_up_turn_moves_only_the_blocks_the_decoder_lacks(engine, decoder):
    params = SamplingParams(max_tokens=12, temperature=0)
    turn1 = engine.tokenizer.apply_chat_template([{"role": "user", "content": "Name a large city."}])
    _, _, answer1 = handoff(engine, decoder, "f1", turn1, params)
    messages = [{"role": "user", "content": "Name a large city."},
                {"role": "assistant", "content": engine.tokenizer.decode(answer1)},
                {"role": "user", "content": "And another one, in Asia?"}]
    turn2 = engine.tokenizer.apply_chat_template(messages)
    [want] = engine.generate([turn2], params)
    first, start, got = handoff(engine, decoder, "f2", turn2, params)
    bs = decoder.blocks.block_size
    assert got == want.token_ids                               # same tokens as computed whole
    assert start >= len(turn1) // bs * bs > 0                  # the first turn's blocks stayed
    assert first.cached_tokens >= start                        # and the prefiller reused them too
    assert decoder.blocks.num_free == decoder.blocks.num_blocks


def test_held_kv_expires_and_unpulled_adoption_aborts(engine, decoder):
    prompt = engine.chat_prompt("Say hello.")
    params = SamplingParams(max_tokens=8, temperature=0)
    first = prefill(engine, "h2", prompt, params)
    assert engine.expire_held(max_age=3600) == []
    assert engine.expire_held(max_age=0) == ["h2"]
    assert engine.blocks.num_free == engine.blocks.num_blocks
    with pytest.raises(KeyError):
        engine.take_held("h2")
    prefill(engine, "h4", prompt, params)
    assert engine.abort("h4") and not engine.abort("h4")
    decoder.adopt("h2", prompt, params, first.new_token_ids[0])
    assert decoder.reserve_kv("h2") is not None and decoder.blocks.num_free < decoder.blocks.num_blocks
    assert decoder.abort("h2") and decoder.blocks.num_free == decoder.blocks.num_blocks


def test_first_token_that_finishes_holds_nothing(engine):
    prompt = engine.chat_prompt("Say hello.")
    out = prefill(engine, "h3", prompt, SamplingParams(max_tokens=1, temperature=0))
    assert out.finished and out.finish_reason == "length" and not out.kv_held
    assert engine.blocks.num_free == engine.blocks.num_blocks

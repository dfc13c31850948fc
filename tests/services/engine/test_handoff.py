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
    assert decoder.reserve_kv("h1")
    decoder.import_kv("h1", kv)
    rest = decode(decoder, "h1")
    assert first.new_token_ids + rest == want.token_ids
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
    assert decoder.reserve_kv("h2") and decoder.blocks.num_free < decoder.blocks.num_blocks
    assert decoder.abort("h2") and decoder.blocks.num_free == decoder.blocks.num_blocks


def test_first_token_that_finishes_holds_nothing(engine):
    prompt = engine.chat_prompt("Say hello.")
    out = prefill(engine, "h3", prompt, SamplingParams(max_tokens=1, temperature=0))
    assert out.finished and out.finish_reason == "length" and not out.kv_held
    assert engine.blocks.num_free == engine.blocks.num_blocks

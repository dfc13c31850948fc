"""The scripted decode step (``model.decode_layers`` under TorchScript) gives bit-identical hidden
states to the eager layers, for every weight mode it takes, on batches of different contexts — in
one attention group and in several (a long prompt beside short ones)."""

import pytest
import torch

from benchmarks.engine_quality import load
from services.engine import SamplingParams
from services.engine.cpu import CpuFeatures

PROMPTS = ["What is the capital of France?", "Say hello.",
           "Explain photosynthesis in one sentence, then list three plants that use it.",
           "Summarize in one line: " + "The quick brown fox jumps over the lazy dog. " * 60]


def each_forward_both_ways(engine, monkeypatch) -> list[tuple[int, bool]]:
    """Run every forward of the engine's model eagerly and scripted; record, per forward, its number
    of decode groups when it was a decode-only step (else 0) and whether both gave the same hidden
    states bit for bit."""
    model, seen = engine.model, []
    forward = model.forward

    def both(ids, positions, cache, meta):
        model.script_decode = False
        eager = forward(ids, positions, cache, meta)
        model.script_decode = True
        scripted = forward(ids, positions, cache, meta)   # rewrites the same KV slots with the same values
        seen.append((0 if meta.prefills else len(meta.decode_groups), torch.equal(eager, scripted)))
        return scripted

    monkeypatch.setattr(model, "forward", both)
    return seen


@pytest.mark.parametrize("mode", ["float32", "bfloat16", "int4", "int4-fused"])
def test_scripted_decode_steps_match_the_eager_layers_bit_for_bit(mode, engine, settings, monkeypatch):
    if mode != "float32" and not CpuFeatures.detect().native("bfloat16"):
        pytest.skip("bf16 (and int4) is not native on this CPU")
    eng = engine if mode == "float32" else load(mode, settings.cache_dir)
    assert eng.model._scripted(eng.cache) is not None, "the scripted step is not used in this mode"
    seen = each_forward_both_ways(eng, monkeypatch)
    outs = eng.generate([eng.chat_prompt(p) for p in PROMPTS], SamplingParams(max_tokens=6, temperature=0))
    assert all(len(o.token_ids) == 6 for o in outs)
    decode_steps = [same for groups, same in seen if groups]
    assert len(decode_steps) >= 5 and all(decode_steps), seen
    assert any(groups > 1 for groups, _ in seen), seen
    assert all(same for _, same in seen)
    assert eng.model.script_decode                    # nothing turned it off on the way


def test_an_engine_can_decode_without_the_script(settings):
    from services.engine import EngineConfig, LLMEngine

    eng = LLMEngine(EngineConfig(kv_cache_bytes=64 << 20, script_decode=False), settings.cache_dir)
    assert eng.model._scripted(eng.cache) is None
    out = eng.generate([eng.chat_prompt("What is the capital of France?")], SamplingParams(max_tokens=8,
                                                                                            temperature=0))
    assert "Paris" in out[0].text

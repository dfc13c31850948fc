"""Dense bf16 weights packed for oneDNN (``services/engine/packed.py``): the same bits as the plain
weights in every step that uses them, used only where they may be, and never for other modes."""

import pytest
import torch
import torch.nn.functional as F

from benchmarks.engine_quality import load
from services.engine import SamplingParams, packed
from services.engine.cpu import CpuFeatures

needs_bf16 = pytest.mark.skipif(not CpuFeatures.detect().native("bfloat16") or not packed.available(
    torch.bfloat16, "cpu"), reason="bf16 is not native here, or this torch cannot pack for oneDNN")

PROMPTS = ["What is the capital of France?", "Say hello.",
           "Explain photosynthesis in one sentence, then list three plants that use it."]


@needs_bf16
@pytest.mark.parametrize("shape", [(960, 576), (576, 1536)])
def test_a_packed_weight_gives_the_plain_products_bits(shape):
    w = (torch.randn(*shape) * 0.02).to(torch.bfloat16)
    p = packed.pack(w)
    assert p.is_mkldnn and packed.same_bits(w, p, rows=tuple(range(1, 70)) + (packed.MAX_ROWS,))
    x = torch.randn(5, shape[1]).to(torch.bfloat16)
    assert torch.equal(packed.matmul(x, p), F.linear(x, w))
    assert torch.equal(packed.matmul(x.t().contiguous().t(), p), F.linear(x, w))   # any strides


@needs_bf16
def test_bf16_steps_give_the_same_bits_packed_and_plain(settings, monkeypatch):
    eng = load("bfloat16", settings.cache_dir)
    model, seen = eng.model, []
    rows = model.pack_rows
    assert rows == min(packed.MAX_ROWS, eng.config.max_num_seqs)
    forward, logits = model.forward, model.logits

    def both(ids, positions, cache, meta):
        model.pack_rows = 0
        plain = forward(ids, positions, cache, meta)
        model.pack_rows = rows
        fast = forward(ids, positions, cache, meta)      # rewrites the same KV slots with the same values
        seen.append((ids.shape[0], torch.equal(plain, fast)))
        return fast

    def both_logits(hidden):
        model.pack_rows = 0
        plain = logits(hidden)
        model.pack_rows = rows
        fast = logits(hidden)
        seen.append((-hidden.shape[0], torch.equal(plain, fast)))
        return fast

    monkeypatch.setattr(model, "forward", both)
    monkeypatch.setattr(model, "logits", both_logits)
    outs = eng.generate([eng.chat_prompt(p) for p in PROMPTS], SamplingParams(max_tokens=6, temperature=0))
    assert all(len(o.token_ids) == 6 for o in outs)
    assert model._packed is not None, "the packed weights were never used"
    assert len(seen) >= 10 and all(same for _, same in seen), seen
    assert model._packed_weights(rows + 1) is None          # a longer prefill chunk: plain


@pytest.mark.parametrize("mode", ["float32", "int4"])
def test_other_modes_never_pack(mode, engine, settings):
    if mode != "float32" and not CpuFeatures.detect().native("bfloat16"):
        pytest.skip("int4 is not native on this CPU")
    eng = engine if mode == "float32" else load(mode, settings.cache_dir)
    eng.generate([eng.chat_prompt("Say hello.")], SamplingParams(max_tokens=3, temperature=0))
    assert eng.model._packed_weights(1) is None and eng.model._packed is None
    assert eng.model.pack_rows == 0

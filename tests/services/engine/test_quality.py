"""Lower-precision modes stay close to float32 (bounds on the numbers in docs/benchmarks.md §8),
and int4 keeps batch invariance. Skipped where bf16 is not native (the engine refuses it there)."""

import pytest
import torch
import torch.nn.functional as F

from benchmarks.engine_quality import PROMPTS, agreement, greedy, load, perplexity, text_ids
from services.engine.cpu import CpuFeatures
from services.engine.quant import Int4Weight, Int8Weight
from tests.services.engine import test_engine as engine_tests

needs_bf16 = pytest.mark.skipif(not CpuFeatures.detect().native("bfloat16"),
                                reason="bf16 (and int4, which computes in bf16) is not native on this CPU")
MAX_TOKENS = 24
# (perplexity change vs fp32 allowed, least mean share of the fp32 answer reproduced)
BOUNDS = {"bfloat16": (0.02, 0.5), "int4": (0.04, 0.3), "int4-fused": (0.04, 0.3)}


@pytest.fixture(scope="module")
def reference(engine):
    return perplexity(engine, text_ids(engine)), greedy(engine, PROMPTS, MAX_TOKENS)


@pytest.fixture(scope="module", params=list(BOUNDS))
def low(request, settings):
    return request.param, load(request.param, settings.cache_dir)


@pytest.mark.slow
@needs_bf16
def test_lower_precision_stays_close_to_float32(reference, low):
    (ref_ppl, ref_out), (mode, eng) = reference, low
    max_ppl_change, min_share = BOUNDS[mode]
    ppl = perplexity(eng, text_ids(eng))
    share, same = agreement(ref_out, greedy(eng, PROMPTS, MAX_TOKENS))
    assert abs(ppl / ref_ppl - 1) <= max_ppl_change, (mode, ppl, ref_ppl)
    assert share >= min_share, (mode, share, same)


@pytest.mark.slow
@needs_bf16
def test_int4_greedy_is_batch_invariant(settings):
    engine_tests.test_greedy_is_batch_invariant_under_continuous_batching(load("int4", settings.cache_dir))


@needs_bf16
def test_int4_weights_recover_a_q4_1_grid_and_rows_do_not_depend_on_the_batch():
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (96, 4, 32), generator=gen)
    codes[..., 0], codes[..., 1] = 0, 15                     # Q4_1 uses both ends of each group
    scale, low = torch.rand(96, 4, 1, generator=gen) / 50, -torch.rand(96, 4, 1, generator=gen) / 5
    w = (codes * scale + low).view(96, 128)
    q = Int4Weight(w)
    assert (q.dequantize() - w).abs().max() <= w.abs().max() * 2 ** -7   # only bf16 scale rounding
    x = torch.randn(33, 128, generator=gen).bfloat16()
    ref = F.linear(x.float(), w)
    for kernel in (q, Int8Weight(w)):
        out = kernel(x)
        assert (out.float() - ref).norm() / ref.norm() < 0.02
        assert all(torch.equal(kernel(x[:m])[:1], out[:1]) for m in (1, 2, 8, 17))

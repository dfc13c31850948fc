"""The mixed-workload benchmark counts the same tokens on both sides (real model, tiny run)."""

import pytest

from benchmarks.baseline import load_hf
from benchmarks.throughput import make_workload, run_engine, run_transformers, summarize
from services.engine.config import DTYPES

pytestmark = pytest.mark.slow


def test_workload_is_fixed_by_its_seed_and_mixes_passages_with_short_prompts(engine):
    a, b = make_workload(engine, 6, seed=3), make_workload(engine, 6, seed=3)
    assert a == b and a != make_workload(engine, 6, seed=4)
    short, long_ = [len(p) for i, p in enumerate(a) if i % 3 != 2], [len(a[2]), len(a[5])]
    assert max(short) < 60 and min(long_) > 60


def test_engine_and_transformers_sides_count_the_same_answers(engine):
    prompts = make_workload(engine, 3, seed=0)
    e = run_engine(engine, prompts, max_tokens=48)
    model = load_hf(engine.model_dir, DTYPES[engine.config.dtype])
    eos = sorted(engine.eos_token_ids)
    h = run_transformers(model, prompts, batch=3, max_tokens=48, pad_id=eos[0], eos_ids=eos)
    assert e["tokens"] == h["tokens"]                  # greedy fp32: the same answers, cut the same way
    ended = [t[-1] in engine.eos_token_ids for t in e["tokens"]]
    assert any(ended) and not all(ended)               # some end at end-of-turn, one at the cap
    assert all(len(t) == 48 for t, end in zip(e["tokens"], ended) if not end)
    es, hs = summarize(e, prompts), summarize(h, prompts)
    assert es["output_tokens"] == hs["output_tokens"] == sum(map(len, e["tokens"]))
    assert es["decode_rows"] == es["output_tokens"] - 3 and es["useful_row_fraction"] == 1.0
    assert hs["decode_rows"] == 3 * 47 > es["decode_rows"]   # generate runs every row to the longest

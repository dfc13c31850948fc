"""Datasets: lengths, calibration, the shipped prompts (no server)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from tandem.bench.config import WorkloadConfig
from tandem.bench.workload import Calibration, chat_prompts, probe_word_counts, requests, vocabulary


def take(config, n=500, calibration=Calibration(), seed=0):
    return list(itertools.islice(requests(config, calibration, np.random.default_rng(seed)), n))


def test_random_lengths_are_uniform_in_the_range():
    reqs = take(WorkloadConfig(input_len=100, output_len=50, range_ratio=0.2))
    ins, outs = [r.prompt_len for r in reqs], [r.max_tokens for r in reqs]
    assert (min(ins), max(ins), min(outs), max(outs)) == (80, 120, 40, 60)
    assert np.mean(ins) == pytest.approx(100, rel=0.03) and np.mean(outs) == pytest.approx(50, rel=0.03)
    fixed = take(WorkloadConfig(input_len=100, output_len=50), n=20)
    assert {r.prompt_len for r in fixed} == {100} and {r.max_tokens for r in fixed} == {50}


def test_random_prompts_are_real_words_sized_by_the_calibration():
    reqs = take(WorkloadConfig(input_len=100, output_len=5), n=20, calibration=Calibration(1.25, 30))
    vocab = set(vocabulary())
    for r in reqs:
        words = r.prompt.rstrip(".").lower().split()
        assert len(words) == 80 and set(words) <= vocab
    assert len({r.prompt for r in reqs}) == 20                  # distinct: no shared prefix to cache


def test_same_seed_same_requests():
    config = WorkloadConfig(input_len=30, output_len=5, range_ratio=0.5)
    assert take(config, 50, seed=3) == take(config, 50, seed=3) != take(config, 50, seed=4)


def test_calibration_fit():
    c = Calibration.fit((8, 40), (1008, 1070))
    assert c.tokens_per_word == pytest.approx(1.03) and c.overhead == pytest.approx(40 - 8 * 1.03)
    assert c.measured and c.words_for(103) == 100 and c.words_for(0) == 1
    with pytest.raises(ValueError):
        Calibration.fit((8, 40), (100, 40))
    assert probe_word_counts(WorkloadConfig(input_len=10)) == (8, 64)
    assert probe_word_counts(WorkloadConfig(input_len=500, range_ratio=0.5)) == (8, 750)
    assert probe_word_counts(WorkloadConfig(input_len=8000)) == (8, 1024)


def test_chat_dataset_cycles_the_shipped_prompts_in_a_seeded_order():
    prompts = chat_prompts()
    assert 40 <= len(prompts) <= 80 and len(set(prompts)) == len(prompts)
    assert all(10 < len(p) < 200 for p in prompts)
    reqs = take(WorkloadConfig(dataset="chat", output_len=32), n=2 * len(prompts))
    first, second = reqs[:len(prompts)], reqs[len(prompts):]
    assert sorted(r.prompt for r in first) == sorted(prompts) == sorted(r.prompt for r in second)
    assert [r.prompt for r in first] != list(prompts)           # shuffled
    assert {r.max_tokens for r in reqs} == {32} and {r.prompt_len for r in reqs} == {None}


def test_chat_dataset_from_a_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p}) for p in ["one?", "two?"]) + "\n\n")
    reqs = take(WorkloadConfig(dataset="chat", dataset_path=path), n=4)
    assert sorted(r.prompt for r in reqs) == ["one?", "one?", "two?", "two?"]

import torch

from services.engine.sampler import sample
from services.engine.sequence import SamplingParams, Sequence


def seq(seed=1, **params):
    s = Sequence("r", [1], SamplingParams(**params), 10)
    s.seed = seed
    return s


def test_greedy_is_argmax_per_row():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]])
    assert sample(logits, [seq(temperature=0), seq(temperature=0)]) == [1, 0]


def test_top_k_1_and_tiny_top_p_are_greedy():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    best = logits.argmax(-1).tolist()
    assert sample(logits, [seq(seed=i, top_k=1) for i in range(4)]) == best
    assert sample(logits, [seq(seed=i, top_p=1e-6) for i in range(4)]) == best


def test_same_seed_same_token_different_seeds_vary():
    logits = torch.zeros(1, 1000)
    assert sample(logits, [seq(seed=42)]) == sample(logits, [seq(seed=42)])
    draws = {sample(logits, [seq(seed=s)])[0] for s in range(20)}
    assert len(draws) > 10


def test_token_index_changes_the_draw():
    logits = torch.zeros(1, 1000)
    s = seq(seed=7)
    draws = set()
    for _ in range(10):
        draws.add(sample(logits, [s])[0])
        s.output_token_ids.append(0)
    assert len(draws) > 5


def test_temperature_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    counts = [0, 0, 0]
    for i in range(2000):
        counts[sample(logits, [seq(seed=i, temperature=1.0)])[0]] += 1
    assert 0.65 < counts[0] / 2000 < 0.75 and 0.07 < counts[2] / 2000 < 0.13


def test_top_p_drops_the_tail():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = {sample(logits, [seq(seed=i, top_p=0.8)])[0] for i in range(300)}
    assert seen == {0, 1}

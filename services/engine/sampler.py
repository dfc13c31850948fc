"""Per-request sampling: greedy, temperature, top-k, top-p, reproducible seeds."""

from __future__ import annotations

import torch

from .sequence import Sequence

_SEED_STRIDE = 1_000_003


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """One token per row of ``logits`` (fp32 ``[N, vocab]``), each row with its sequence's params.

    A sampled token ``i`` of a sequence uses a generator seeded by ``(seed, i)``, so sampling is
    reproducible and does not depend on the batch or on which worker samples.
    """
    tokens = logits.argmax(dim=-1).tolist()
    for row, seq in enumerate(seqs):
        if not seq.params.greedy:
            tokens[row] = _sample_row(logits[row], seq)
    return tokens


def _sample_row(logits: torch.Tensor, seq: Sequence) -> int:
    p = seq.params
    logits = logits / p.temperature
    if p.top_k and p.top_k < logits.shape[-1]:
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if p.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        cumulative = sorted_probs.cumsum(-1)
        drop = cumulative - sorted_probs > p.top_p  # keep the smallest prefix reaching top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    g = torch.Generator(device=logits.device)
    g.manual_seed((seq.seed * _SEED_STRIDE + len(seq.output_token_ids)) % (2**63))
    noise = torch.empty_like(probs).exponential_(1.0, generator=g)
    return int((probs / noise).argmax())

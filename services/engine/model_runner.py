"""Turns a ``SchedulerOutput`` into tensors, runs the model, and returns logits for sampled rows."""

from __future__ import annotations

import torch

from .attention import AttentionMetadata, DecodeGroup, PrefillSpan
from .kv_cache import KVCache
from .model import LlamaForCausalLM
from .scheduler import ScheduledSeq, SchedulerOutput


# A decode group's padding is worth splitting off once it wastes this many (query, slot) pairs:
# one more group costs two gathers and one SDPA call per layer (~1 ms a step on this model), about
# what gathering and attending over 512 padded slots costs.
SPLIT_SAVING = 512


def group_by_context(ctx: list[int], min_saving: int = SPLIT_SAVING) -> list[tuple[int, int]]:
    """Split rows sorted by descending context length into ``[start, end)`` groups.

    Each group is padded to its first (longest) row; a new group starts where doing so saves at
    least ``min_saving`` padded slots over the rows left.
    """
    groups, start = [], 0
    for i in range(1, len(ctx)):
        if (len(ctx) - i) * (ctx[start] - ctx[i]) >= min_saving:
            groups.append((start, i))
            start = i
    return groups + [(start, len(ctx))] if ctx else []


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, cache: KVCache, device: torch.device):
        self.model = model
        self.cache = cache
        self.device = device

    def run(self, batch: SchedulerOutput) -> tuple[list[ScheduledSeq], torch.Tensor]:
        """Run one step; return the scheduled entries that sample and their logits ``[N, vocab]``."""
        # Longest context first, so that decode groups of similar length are contiguous rows.
        decode = sorted((s for s in batch.scheduled if s.num_tokens == 1), key=lambda s: -s.start)
        prefill = [s for s in batch.scheduled if s.num_tokens > 1]
        ordered = decode + prefill
        ids, positions, slots = [], [], []
        for s in ordered:
            ids += s.seq.token_at(s.start, s.start + s.num_tokens)
            positions += range(s.start, s.start + s.num_tokens)
            slots += self.cache.slot_ids(s.seq.block_table, s.start, s.start + s.num_tokens)
        meta = self._metadata(decode, prefill, torch.tensor(slots, device=self.device))
        hidden = self.model(torch.tensor(ids, device=self.device),
                            torch.tensor(positions, device=self.device), self.cache, meta)
        rows, sampled, offset = [], [], 0
        for s in ordered:
            offset += s.num_tokens
            if s.samples:
                rows.append(offset - 1)
                sampled.append(s)
        if not rows:
            return [], torch.empty(0)
        return sampled, self.model.logits(hidden[torch.tensor(rows, device=self.device)])

    def _metadata(self, decode, prefill, slot_mapping) -> AttentionMetadata:
        ctx = [s.start + 1 for s in decode]
        groups = tuple(self._decode_group(decode[a:b], ctx[a:b], a) for a, b in group_by_context(ctx))
        spans, start = [], len(decode)
        for s in prefill:
            end = s.start + s.num_tokens
            context = None if s.start == 0 else self.cache.slots_for(s.seq.block_table, 0, end)
            spans.append(PrefillSpan(start, s.num_tokens, end, context))
            start += s.num_tokens
        return AttentionMetadata(slot_mapping, self.cache.block_size, groups, tuple(spans))

    def _decode_group(self, decode: list[ScheduledSeq], ctx: list[int], start: int) -> DecodeGroup:
        bs = self.cache.block_size
        n_blocks = -(-ctx[0] // bs)
        blocks = torch.tensor([(s.seq.block_table + [0] * n_blocks)[:n_blocks] for s in decode])
        mask = None
        if any(c != n_blocks * bs for c in ctx):
            pos = torch.arange(n_blocks * bs)
            past = (pos[None, :] >= torch.tensor(ctx)[:, None])[:, None, None, :]
            # additive, in the cache's dtype: what SDPA would turn a boolean mask into in every
            # layer (same values, so the same results), built once per step
            mask = torch.zeros(past.shape, dtype=self.cache.kv.dtype).masked_fill_(past, float("-inf"))
            mask = mask.to(self.device)
        return DecodeGroup(start, start + len(decode), blocks.to(self.device), mask)

"""Turns a ``SchedulerOutput`` into tensors, runs the model, and returns logits for sampled rows."""

from __future__ import annotations

import torch

from .attention import AttentionMetadata, PrefillSpan
from .kv_cache import KVCache
from .model import LlamaForCausalLM
from .scheduler import ScheduledSeq, SchedulerOutput


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, cache: KVCache, device: torch.device):
        self.model = model
        self.cache = cache
        self.device = device

    def run(self, batch: SchedulerOutput) -> tuple[list[ScheduledSeq], torch.Tensor]:
        """Run one step; return the scheduled entries that sample and their logits ``[N, vocab]``."""
        decode = [s for s in batch.scheduled if s.num_tokens == 1]
        prefill = [s for s in batch.scheduled if s.num_tokens > 1]
        ordered = decode + prefill
        ids, positions, slots = [], [], []
        for s in ordered:
            ids += s.seq.token_at(s.start, s.start + s.num_tokens)
            positions += range(s.start, s.start + s.num_tokens)
            slots.append(self.cache.slots_for(s.seq.block_table, s.start, s.start + s.num_tokens))
        meta = self._metadata(decode, prefill, torch.cat(slots))
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
        decode_slots = decode_mask = None
        if decode:
            ctx = torch.tensor([s.start + 1 for s in decode])
            width = int(ctx.max())
            bs = self.cache.block_size
            n_blocks = -(-width // bs)
            tables = torch.tensor([(s.seq.block_table + [0] * n_blocks)[:n_blocks] for s in decode])
            pos = torch.arange(width)
            decode_slots = (tables[:, pos // bs] * bs + pos % bs).to(self.device)
            decode_mask = (pos[None, :] < ctx[:, None])[:, None, None, :].to(self.device)
        spans, start = [], len(decode)
        for s in prefill:
            end = s.start + s.num_tokens
            context = None if s.start == 0 else self.cache.slots_for(s.seq.block_table, 0, end)
            spans.append(PrefillSpan(start, s.num_tokens, end, context))
            start += s.num_tokens
        return AttentionMetadata(slot_mapping, len(decode), decode_slots, decode_mask, tuple(spans))

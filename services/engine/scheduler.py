"""Continuous batching: each step hands out a number of tokens to each request.

There is no prefill or decode phase. A request gets whatever it has not computed yet — its whole
prompt, a chunk of it under the step's token budget, or the one token it sampled last step — and
sequences join and leave between steps. Running requests are served first, oldest first; waiting
ones are admitted in arrival order while blocks, the token budget and ``max_num_seqs`` allow.

Prefix caching: a request admitted with the first k blocks of its tokens in the prefix cache reuses
them and starts at ``num_computed_tokens = k * block_size``; at least its last token is always
computed, so a token can be sampled. Blocks that became full in a step are keyed right after it.

KV memory is never over-committed: a request is admitted only when its whole prompt fits in the
free blocks; if a running request needs a block and none is free, the newest running request is
preempted (its blocks freed, its tokens recomputed later). A request that could never fit is
refused when it is added.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .block_manager import BlockManager, blocks_for
from .config import EngineConfig
from .sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class ScheduledSeq:
    """``seq`` computes tokens ``[start, start + num_tokens)`` this step."""

    seq: Sequence
    start: int
    num_tokens: int

    @property
    def samples(self) -> bool:
        """True when this chunk reaches the end of the sequence, so a token is sampled after it."""
        return self.start + self.num_tokens == self.seq.num_tokens


@dataclass(frozen=True)
class SchedulerOutput:
    scheduled: tuple[ScheduledSeq, ...]

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)


class Scheduler:
    def __init__(self, config: EngineConfig, blocks: BlockManager):
        self.config = config
        self.blocks = blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        out: list[ScheduledSeq] = []
        for seq in list(self.running):
            if seq.status is not SequenceStatus.RUNNING or budget == 0:
                continue
            n = min(seq.num_uncomputed_tokens, budget)
            if not self._make_room(seq, seq.num_computed_tokens + n):
                continue
            out.append(ScheduledSeq(seq, seq.num_computed_tokens, n))
            budget -= n
        while self.waiting and budget and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            if not self._admit(seq):
                break  # the head waits for blocks; later arrivals do not overtake it
            n = min(seq.num_uncomputed_tokens, budget)
            self.blocks.grow(seq.block_table, seq.num_computed_tokens + n)
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.append(ScheduledSeq(seq, seq.num_computed_tokens, n))
            budget -= n
        return SchedulerOutput(tuple(out))

    def _admit(self, seq: Sequence) -> bool:
        """Reserve room for ``seq``'s whole token list, starting from its cached prefix; False if full.

        A sequence with no KV yet (new or preempted) reuses the cached blocks of its longest cached
        prefix and starts computing after them. One whose KV was imported already holds its blocks.
        """
        if seq.num_computed_tokens:
            return self.blocks.can_grow(seq.block_table, seq.num_tokens)
        hits = self.blocks.match_prefix(seq)
        if not self.blocks.can_admit(seq, hits):
            return False
        self.blocks.take_prefix(seq, hits)
        seq.num_computed_tokens = len(hits) * self.blocks.block_size
        if not seq.num_preemptions:
            seq.num_cached_tokens = seq.num_computed_tokens
        return True

    def mark_computed(self, batch: SchedulerOutput) -> None:
        """The model ran ``batch``: advance each sequence and cache the blocks it filled."""
        for s in batch.scheduled:
            s.seq.num_computed_tokens = s.start + s.num_tokens
            self.blocks.cache_full_blocks(s.seq, s.start, s.start + s.num_tokens)

    def _make_room(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow ``seq``'s blocks to ``num_tokens``, preempting newer requests; False if ``seq`` itself went."""
        while not self.blocks.can_grow(seq.block_table, num_tokens):
            victim = self.running[-1]
            self.preempt(victim)
            if victim is seq:
                return False
        self.blocks.grow(seq.block_table, num_tokens)
        return True

    def preempt(self, seq: Sequence) -> None:
        """Release ``seq``'s blocks and put it first in line; its prompt and output are recomputed
        (from whatever of them is still cached when it is admitted again)."""
        self.running.remove(seq)
        self.blocks.free(seq.block_table)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Take ``seq`` out of the queues and return its blocks. Safe to call once per sequence."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.blocks.free(seq.block_table)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def fits_ever(self, num_tokens: int) -> bool:
        return blocks_for(num_tokens, self.blocks.block_size) <= self.blocks.num_blocks

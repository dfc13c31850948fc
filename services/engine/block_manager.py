"""Hands out fixed-size KV blocks; never gives out a block it does not have.

A block is in exactly one of three places (``num_free + num_used == num_blocks``):

```
  free list ──grow()──────────────────────▶ used (ref = block tables holding it)
      ▲  (free list empty: evict the LRU       │ free(): ref - 1; at 0 →
      │   evictable block, forget its key)     ├── never keyed ──────────▶ free list
      │                                        └── keyed ──▶ evictable ──hit──▶ used
```

- **used**: listed in one or more sequences' block tables; ``ref`` counts them. Only a full,
  keyed (immutable) block can have more than one user.
- **evictable**: keyed, held by nobody; its KV stays findable (``PrefixCache``) until the block is
  handed out again. Evictable blocks count as free: admission never waits for them.
- **free list**: blocks holding nothing anyone can find; handed out first.
"""

from __future__ import annotations

from collections import deque

from .prefix_cache import PrefixCache, PrefixCacheStats
from .sequence import Sequence


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class BlockManager:
    """Reference-counted KV blocks. The caller holds allocated ids in a sequence's block table."""

    def __init__(self, num_blocks: int, block_size: int, model_id: str = "", enable_caching: bool = True):
        if num_blocks <= 0:
            raise ValueError("the KV cache must hold at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.cache = PrefixCache(block_size, model_id, enable_caching)
        self._free: deque[int] = deque(range(num_blocks))
        self._ref: dict[int, int] = {}          # used blocks → number of block tables holding them

    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now: the free list plus evictable cached blocks."""
        return len(self._free) + self.cache.num_evictable

    @property
    def num_used(self) -> int:
        return len(self._ref)

    def blocks_needed(self, block_table: list[int], num_tokens: int) -> int:
        return max(0, blocks_for(num_tokens, self.block_size) - len(block_table))

    def can_grow(self, block_table: list[int], num_tokens: int) -> bool:
        return self.blocks_needed(block_table, num_tokens) <= self.num_free

    def grow(self, block_table: list[int], num_tokens: int) -> None:
        """Extend ``block_table`` in place with new blocks so it covers ``num_tokens`` tokens."""
        need = self.blocks_needed(block_table, num_tokens)
        if need > self.num_free:
            raise RuntimeError(f"KV cache exhausted: need {need} blocks, {self.num_free} free")
        for _ in range(need):
            block = self._free.popleft() if self._free else self.cache.evict()
            self._ref[block] = 1
            block_table.append(block)

    def free(self, block_table: list[int]) -> None:
        """Drop this table's reference to each of its blocks and empty the table.

        The tail is released first, so a sequence's later blocks are evicted before its earlier
        ones (earlier blocks are the prefixes other requests share).
        """
        for block in reversed(block_table):
            ref = self._ref.get(block)
            if ref is None:
                raise RuntimeError(f"double free of KV block {block}")
            if ref > 1:
                self._ref[block] = ref - 1
                continue
            del self._ref[block]
            if self.cache.is_cached(block):
                self.cache.park(block)
            else:
                self._free.append(block)
        block_table.clear()

    # -- prefix caching -------------------------------------------------------------------------
    def match_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks that can stand in for ``seq``'s first tokens (none if caching is off)."""
        return self.cache.match(seq)

    def can_admit(self, seq: Sequence, hits: list[int]) -> bool:
        """Whether ``seq``'s whole token list fits now, reusing ``hits`` as its first blocks."""
        parked = sum(1 for b in hits if b not in self._ref)   # taking them uses up free room
        return self.blocks_needed(hits, seq.num_tokens) + parked <= self.num_free

    def take_prefix(self, seq: Sequence, hits: list[int]) -> None:
        """Start ``seq``'s empty block table with the cached ``hits`` (one more reference each)."""
        if seq.block_table:
            raise RuntimeError(f"{seq.request_id} already holds blocks")
        for block in hits:
            if block in self._ref:
                self._ref[block] += 1
            else:
                self.cache.unpark(block)
                self._ref[block] = 1
        seq.block_table.extend(hits)
        self.cache.record_lookup(seq.num_tokens, len(hits) * self.block_size)

    def cache_full_blocks(self, seq: Sequence, start: int, end: int) -> None:
        """Key the blocks of ``seq`` that became full when tokens ``[start, end)`` were computed."""
        for i in range(start // self.block_size, end // self.block_size):
            self.cache.insert(seq, i)

    def stats(self) -> PrefixCacheStats:
        return self.cache.stats()

"""Automatic prefix caching: full KV blocks found again by a hash chain of their tokens.

A full block's key is ``H(parent key, its token ids)``; the first block's parent is a root key
made from the model and dtype, so one key names one exact KV content on any engine serving the
same model (keys are ``blake2b`` digests, stable across processes). A request whose first k
blocks' keys are in the cache reuses those k blocks and computes only the rest.

Rules:
- Only **full** blocks whose tokens are all known and whose KV has been **computed** are keyed.
  A block that is still filling is private to one sequence and never keyed.
- A keyed block is immutable: nobody writes its slots again, so several sequences may share it
  (the block manager counts references). A sequence never writes into a block it got as a hit
  because hits stop before its last token (at least one token is always computed).
- One key maps to one block. If a second sequence computes the same block (e.g. two identical
  prompts in one step), its copy stays private and returns to the free list when released.
- A keyed block whose last user released it stays keyed, on an LRU list of evictable blocks. The
  block manager evicts from there (oldest release first) only when its free list is empty.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

from .sequence import Sequence


def root_key(model_id: str) -> bytes:
    """The parent key of every first block: anything that changes the KV (model, dtype) goes here."""
    return hashlib.blake2b(model_id.encode(), digest_size=16).digest()


def block_key(parent: bytes, token_ids: list[int]) -> bytes:
    return hashlib.blake2b(parent + array("i", token_ids).tobytes(), digest_size=16).digest()


@dataclass(frozen=True)
class PrefixCacheStats:
    """Counters since the engine started; ``cached_blocks`` is the number keyed right now."""

    queries: int = 0        # prompt tokens looked up at admission (re-admissions count again)
    hits: int = 0           # of those, tokens whose KV came from the cache
    cached_blocks: int = 0
    evictions: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


class PrefixCache:
    """The key ↔ block map and the LRU list of keyed blocks nobody uses. Owned by ``BlockManager``."""

    def __init__(self, block_size: int, model_id: str, enabled: bool = True):
        self.block_size = block_size
        self.enabled = enabled
        self._root = root_key(model_id)
        self._block_of: dict[bytes, int] = {}
        self._key_of: dict[int, bytes] = {}
        self._evictable: OrderedDict[int, None] = OrderedDict()   # oldest release first
        self.queries = self.hits = self.evictions = 0

    # -- keys -----------------------------------------------------------------------------------
    def keys(self, seq: Sequence, num_blocks: int) -> list[bytes]:
        """The keys of ``seq``'s first ``num_blocks`` full blocks; extends ``seq.block_hashes``."""
        bs, hashes = self.block_size, seq.block_hashes
        while len(hashes) < num_blocks:
            i = len(hashes)
            hashes.append(block_key(hashes[-1] if hashes else self._root, seq.token_at(i * bs, (i + 1) * bs)))
        return hashes[:num_blocks]

    def match(self, seq: Sequence) -> list[int]:
        """Cached blocks holding ``seq``'s longest cached prefix, short of its last token."""
        if not self.enabled:
            return []
        hits = []
        for key in self.keys(seq, (seq.num_tokens - 1) // self.block_size):
            block = self._block_of.get(key)
            if block is None:
                break
            hits.append(block)
        return hits

    def insert(self, seq: Sequence, block_index: int) -> None:
        """Key block ``block_index`` of ``seq`` (full and computed) unless its key is taken."""
        if not self.enabled:
            return
        key = self.keys(seq, block_index + 1)[block_index]
        block = seq.block_table[block_index]
        if key not in self._block_of and block not in self._key_of:
            self._block_of[key] = block
            self._key_of[block] = key

    def record_lookup(self, num_tokens: int, num_hit_tokens: int) -> None:
        if self.enabled:
            self.queries += num_tokens
            self.hits += num_hit_tokens

    # -- the evictable list (keyed blocks with no user) -----------------------------------------
    def is_cached(self, block: int) -> bool:
        return block in self._key_of

    @property
    def num_evictable(self) -> int:
        return len(self._evictable)

    def park(self, block: int) -> None:
        """A keyed block's last user released it: keep it, most recently used last."""
        self._evictable[block] = None

    def unpark(self, block: int) -> None:
        """A parked block was hit: it is in use again and not evictable."""
        del self._evictable[block]

    def evict(self) -> int:
        """Forget the least recently released block's key and hand the block out."""
        block, _ = self._evictable.popitem(last=False)
        del self._block_of[self._key_of.pop(block)]
        self.evictions += 1
        return block

    def stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(self.queries, self.hits, len(self._block_of), self.evictions)

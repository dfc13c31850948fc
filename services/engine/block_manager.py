"""Hands out fixed-size KV blocks from a free list; never gives out a block it does not have."""

from __future__ import annotations

from collections import deque


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class BlockManager:
    """The free list of KV block ids. The caller holds allocated ids in a sequence's block table."""

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks <= 0:
            raise ValueError("the KV cache must hold at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        self._used: set[int] = set()

    @property
    def num_free(self) -> int:
        return len(self._free)

    def blocks_needed(self, block_table: list[int], num_tokens: int) -> int:
        return max(0, blocks_for(num_tokens, self.block_size) - len(block_table))

    def can_grow(self, block_table: list[int], num_tokens: int) -> bool:
        return self.blocks_needed(block_table, num_tokens) <= self.num_free

    def grow(self, block_table: list[int], num_tokens: int) -> None:
        """Extend ``block_table`` in place so it covers ``num_tokens`` tokens."""
        need = self.blocks_needed(block_table, num_tokens)
        if need > self.num_free:
            raise RuntimeError(f"KV cache exhausted: need {need} blocks, {self.num_free} free")
        for _ in range(need):
            block = self._free.popleft()
            self._used.add(block)
            block_table.append(block)

    def free(self, block_table: list[int]) -> None:
        """Return every block of ``block_table`` to the free list and empty the table."""
        for block in block_table:
            if block not in self._used:
                raise RuntimeError(f"double free of KV block {block}")
            self._used.remove(block)
            self._free.append(block)
        block_table.clear()

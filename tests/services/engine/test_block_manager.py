import pytest

from services.engine.block_manager import BlockManager, blocks_for


def test_blocks_for_rounds_up():
    assert [blocks_for(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_grow_and_free_return_every_block():
    bm = BlockManager(num_blocks=6, block_size=4)
    a, b = [], []
    bm.grow(a, 5)            # 2 blocks
    bm.grow(b, 4)            # 1 block
    bm.grow(a, 8)            # still 2 blocks
    assert len(a) == 2 and len(b) == 1 and bm.num_free == 3
    bm.grow(a, 9)
    assert len(a) == 3 and bm.num_free == 2
    assert not set(a) & set(b)
    bm.free(a)
    bm.free(b)
    assert a == [] and b == [] and bm.num_free == 6


def test_never_overcommits():
    bm = BlockManager(num_blocks=2, block_size=4)
    t = []
    assert not bm.can_grow(t, 9)
    with pytest.raises(RuntimeError, match="exhausted"):
        bm.grow(t, 9)
    assert t == [] and bm.num_free == 2


def test_double_free_is_detected():
    bm = BlockManager(num_blocks=2, block_size=4)
    t = []
    bm.grow(t, 1)
    copy = list(t)
    bm.free(t)
    with pytest.raises(RuntimeError, match="double free"):
        bm.free(copy)

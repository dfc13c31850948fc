import zlib

import pytest
import torch

from services.transfer import checksum
from services.transfer import checksums
from services.transfer.checksums import algo_for


def wsum64_reference(data: bytes) -> int:
    """The wsum64 definition, spelled out in plain Python."""
    words = [int.from_bytes(data[i:i + 4], "little", signed=True) for i in range(0, len(data) // 4 * 4, 4)]
    tail = data[len(data) // 4 * 4:]
    total = sum(w * (i + 1) for i, w in enumerate(words))
    total += sum(b * (len(words) + i + 1) for i, b in enumerate(tail))
    total &= (1 << 64) - 1
    return total - (1 << 64) if total >= 1 << 63 else total


def test_cpu_tensors_use_crc32_of_their_bytes():
    kv = torch.randn(3, 2, 5, 2, 8).to(torch.bfloat16)
    assert algo_for(kv.device) == "crc32" and algo_for(torch.device("cuda", 0)) == "wsum64"
    assert checksum(kv) == ("crc32", zlib.crc32(kv.view(torch.uint8).numpy().tobytes()))


@pytest.mark.parametrize("nbytes", [0, 3, 4, 4097, 40000])
def test_wsum64_matches_its_definition(nbytes):
    gen = torch.Generator().manual_seed(nbytes)
    data = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=gen)
    assert checksum(data, "wsum64") == ("wsum64", wsum64_reference(data.numpy().tobytes()))


def test_wsum64_is_the_same_across_chunks(monkeypatch):
    kv = torch.randn(4, 2, 33, 3, 8)
    whole = checksum(kv, "wsum64")
    monkeypatch.setitem(checksums._CHUNK_WORDS, "cpu", 7)
    assert checksum(kv, "wsum64") == whole


@pytest.mark.parametrize("algo", ["crc32", "wsum64"])
def test_detects_a_flipped_byte_and_swapped_words(algo):
    kv = torch.randn(30, 2, 10, 3, 64)
    _, good = checksum(kv, algo)
    flipped = kv.clone()
    flipped.view(torch.uint8).view(-1)[12345] ^= 0x01
    swapped = kv.clone().view(-1)
    swapped[[0, 1]] = swapped[[1, 0]]
    assert checksum(flipped, algo)[1] != good
    assert checksum(swapped, algo)[1] != good


def test_rejects_unknown_algorithm_and_strided_tensor():
    with pytest.raises(ValueError, match="unknown checksum algorithm"):
        checksum(torch.zeros(4), "md5")
    with pytest.raises(ValueError, match="contiguous"):
        checksum(torch.zeros(4, 4).t())

import json

import pytest
import torch

from services.transfer import HEADER_BYTES, KvHeader, KvTransferError
from services.transfer.checksums import checksum


def header(**overrides) -> KvHeader:
    fields = dict(request_id="req-1", num_layers=30, num_tokens=100, num_kv_heads=3, head_dim=64,
                  dtype="bfloat16", nbytes=30 * 2 * 100 * 3 * 64 * 2, checksum=-12345, checksum_algo="wsum64")
    return KvHeader(**{**fields, **overrides})


def raw(obj) -> torch.Tensor:
    """A header tensor holding arbitrary JSON, as a faulty or hostile sender might send it."""
    data = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
    out = torch.zeros(HEADER_BYTES, dtype=torch.uint8)
    if data:
        out[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return out


def fields_of(h: KvHeader) -> dict:
    return json.loads(h.encode().numpy().tobytes().rstrip(b"\0"))


def test_round_trip():
    h = header()
    t = h.encode()
    assert t.dtype == torch.uint8 and tuple(t.shape) == (HEADER_BYTES,)
    assert KvHeader.decode(t) == h
    assert h.shape == (30, 2, 100, 3, 64) and h.torch_dtype == torch.bfloat16


def test_json_names_every_field():
    assert set(fields_of(header())) == {"version", "request_id", "num_layers", "num_tokens", "num_kv_heads",
                                        "head_dim", "dtype", "nbytes", "checksum", "checksum_algo", "start_token",
                                        "error"}


def test_for_tensor_describes_the_kv():
    kv = torch.randn(2, 2, 5, 3, 4)
    h = KvHeader.for_tensor("r", kv)
    assert (h.shape, h.dtype, h.nbytes) == ((2, 2, 5, 3, 4), "float32", kv.numel() * 4)
    assert (h.checksum_algo, h.checksum) == checksum(kv)
    with pytest.raises(ValueError, match="layers, 2, tokens"):
        KvHeader.for_tensor("r", torch.zeros(2, 3, 5, 3, 4))


def test_refusal_round_trip():
    h = KvHeader.refusal("req-9", "held KV expired")
    assert KvHeader.decode(h.encode()) == h
    assert h.error == "held KV expired" and h.nbytes == 0


def test_mismatches_name_each_field():
    h = header()
    assert h.mismatches("req-1", (30, 2, 100, 3, 64), torch.bfloat16) == []
    problems = h.mismatches("req-2", (30, 2, 99, 3, 64), torch.float32, start_token=32)
    assert [p.split(":")[0] for p in problems] == ["request_id", "shape", "dtype", "start_token"]


def test_a_payload_names_the_tokens_it_covers():
    h = KvHeader.for_tensor("r", torch.randn(2, 2, 5, 3, 4), start_token=48)
    assert KvHeader.decode(h.encode()).start_token == 48
    assert h.mismatches("r", (2, 2, 5, 3, 4), torch.float32, start_token=48) == []
    assert h.mismatches("r", (2, 2, 5, 3, 4), torch.float32) == ["start_token: got 48, expected 0"]


def test_too_long_request_id_does_not_encode():
    with pytest.raises(ValueError, match="does not fit"):
        header(request_id="x" * HEADER_BYTES).encode()


@pytest.mark.parametrize("change, message", [
    ({"version": 1}, "version 1"),
    ({"start_token": -16}, "start_token -16"),
    ({"dtype": "float64"}, "dtype"),
    ({"checksum_algo": "md5"}, "checksum_algo"),
    ({"nbytes": 1}, "nbytes 1 does not match"),
    ({"num_tokens": True}, "num_tokens must be int"),
    ({"num_tokens": 1.0}, "num_tokens must be int"),
    ({"checksum": "0x1"}, "checksum must be int"),
    ({"num_tokens": 0, "nbytes": 0}, "dimension below 1"),
    ({"num_layers": -1, "nbytes": -30 * 2 * 100 * 3 * 64 * 2}, "dimension below 1"),
    ({"request_id": ""}, "request_id is empty"),
    ({"error": "gone"}, "refusal carries no payload"),
])
def test_invalid_fields_are_rejected(change, message):
    with pytest.raises(KvTransferError, match=message):
        KvHeader.decode(raw({**fields_of(header()), **change}))


@pytest.mark.parametrize("obj, message", [
    (b"\xff\xfe not utf-8", "not UTF-8 JSON"),
    (b'{"request_id": ', "not UTF-8 JSON"),
    (b"", "not UTF-8 JSON"),
    ([1, 2, 3], "fields list"),
])
def test_garbage_is_rejected(obj, message):
    with pytest.raises(KvTransferError, match=message):
        KvHeader.decode(raw(obj))


def test_missing_and_extra_fields_are_rejected():
    good = fields_of(header())
    missing = {k: v for k, v in good.items() if k != "checksum"}
    for obj in (missing, {**good, "pickle": "no"}):
        with pytest.raises(KvTransferError, match="fields"):
            KvHeader.decode(raw(obj))


def test_bytes_after_the_json_are_rejected():
    t = header().encode()
    t[-1] = 7
    with pytest.raises(KvTransferError, match="non-zero bytes after the JSON"):
        KvHeader.decode(t)


@pytest.mark.parametrize("t", [torch.zeros(HEADER_BYTES - 1, dtype=torch.uint8),
                               torch.zeros(HEADER_BYTES, dtype=torch.int8),
                               torch.zeros(2, HEADER_BYTES // 2, dtype=torch.uint8)])
def test_wrong_tensor_is_rejected(t):
    with pytest.raises(KvTransferError, match="expected 1024 uint8"):
        KvHeader.decode(t)

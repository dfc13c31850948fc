"""KvChannel between real processes over real gloo: a prefill peer (rank 0), decode peers (rank 1).

The peers live for the whole module (spawning one costs a torch import); each test pairs under its
own key, as workers do on demand.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import uuid

import pytest

from services.transfer import KvStoreServer

from .peers import Peer

KV_SHAPE = [30, 2, 100, 3, 64]   # SmolLM2-135M: 30 layers, 3 KV heads of 64; a 100-token prompt
TIMEOUT_S = 10.0
SHORT_TIMEOUT_S = 1.5            # for the tests that wait for a timeout on purpose
MARGIN_S = 1.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ctx():
    return mp.get_context("spawn")


@pytest.fixture(scope="module")
def prefill(ctx):
    peer = Peer(ctx, "prefill")
    yield peer
    peer.stop()
    assert peer.process.exitcode == 0


@pytest.fixture(scope="module")
def decode(ctx):
    peer = Peer(ctx, "decode")
    peer.serve_store()
    yield peer
    peer.stop()
    assert peer.process.exitcode == 0


def pair(decode: Peer, prefill: Peer, timeout: float = TIMEOUT_S) -> str:
    key = f"pair/{decode.name}/{uuid.uuid4().hex[:8]}"
    decode.submit("pair", key=key, rank=1, port=decode.port, timeout=timeout)
    prefill.submit("pair", key=key, rank=0, port=decode.port, timeout=timeout)
    for reply in (decode.result(), prefill.result()):
        assert reply["ok"], reply
        assert reply["backend"] == "gloo"
    return key


def transfer(decode: Peer, prefill: Peer, key: str, request_id: str, shape=KV_SHAPE, dtype="float32",
             seed=0, corrupt=False, expect_id=None, expect_shape=None) -> tuple[dict, dict]:
    """Decode posts its recv first, then prefill sends, as SendKv does; returns both replies."""
    decode.submit("recv", key=key, request_id=expect_id or request_id, shape=expect_shape or shape,
                  dtype=dtype, seed=seed)
    prefill.submit("send", key=key, request_id=request_id, shape=shape, dtype=dtype, seed=seed,
                   corrupt=corrupt)
    return decode.result(), prefill.result()


def assert_received(got: dict, sent: dict, shape=KV_SHAPE, itemsize=4) -> None:
    assert got["ok"] and sent["ok"], (got, sent)
    assert got["equal"], "received KV is not bit-identical to the sent KV"
    nbytes = itemsize
    for d in shape:
        nbytes *= d
    assert got["nbytes"] == sent["nbytes"] == nbytes


@pytest.fixture(scope="module")
def key(decode, prefill):
    return pair(decode, prefill)


@pytest.mark.parametrize("dtype, itemsize", [("float32", 4), ("bfloat16", 2)])
def test_round_trip_is_bit_exact(decode, prefill, key, dtype, itemsize):
    got, sent = transfer(decode, prefill, key, f"req-{dtype}", dtype=dtype, seed=1)
    assert_received(got, sent, itemsize=itemsize)


def test_sequential_transfers_on_one_pair(decode, prefill, key):
    for i, tokens in enumerate([1, 7, 100, 257]):
        shape = [30, 2, tokens, 3, 64]
        got, sent = transfer(decode, prefill, key, f"seq-{i}", shape=shape, dtype="float16", seed=10 + i)
        assert_received(got, sent, shape=shape, itemsize=2)


def test_corrupt_payload_is_rejected_and_pair_survives(decode, prefill, key):
    got, sent = transfer(decode, prefill, key, "corrupt-1", corrupt=True)
    assert sent["ok"], sent
    assert not got["ok"] and got["type"] == "KvTransferError"
    assert "checksum mismatch" in got["error"] and "crc32" in got["error"]
    assert got["broken"] is False and sent["broken"] is False
    assert_received(*transfer(decode, prefill, key, "after-corrupt", seed=2))


@pytest.mark.parametrize("field, override", [
    ("request_id", {"expect_id": "someone-else"}),
    ("shape", {"expect_shape": [30, 2, 101, 3, 64]}),   # expected more: the payload is drained
])
def test_header_mismatch_is_rejected_and_pair_survives(decode, prefill, key, field, override):
    got, sent = transfer(decode, prefill, key, f"mismatch-{field}", **override)
    assert not got["ok"] and got["type"] == "KvTransferError", got
    assert "does not match" in got["error"] and f"{field}: got" in got["error"]
    assert got["broken"] is False
    assert_received(*transfer(decode, prefill, key, f"after-mismatch-{field}", seed=3))


def test_refusal_is_reported_and_pair_survives(decode, prefill, key):
    decode.submit("recv", key=key, request_id="gone", shape=KV_SHAPE, dtype="float32", seed=0)
    refused = prefill.call("refuse", key=key, request_id="gone", reason="held KV expired")
    got = decode.result()
    assert refused["ok"], refused
    assert not got["ok"] and "refused 'gone': held KV expired" in got["error"]
    assert got["broken"] is False
    assert_received(*transfer(decode, prefill, key, "after-refusal", seed=4))


def test_larger_payload_than_expected_breaks_the_pair(decode, prefill):
    key = pair(decode, prefill, timeout=SHORT_TIMEOUT_S)
    got, sent = transfer(decode, prefill, key, "too-big", expect_shape=[30, 2, 50, 3, 64])
    assert not got["ok"] and "shape: got" in got["error"] and got["broken"] is True
    assert sent["elapsed"] < SHORT_TIMEOUT_S + MARGIN_S   # never blocks past its timeout, sent or not


def test_recv_without_sender_times_out_and_breaks_both_ends(decode, prefill):
    key = pair(decode, prefill, timeout=SHORT_TIMEOUT_S)
    got = decode.call("recv", key=key, request_id="never", shape=KV_SHAPE, dtype="float32", seed=0)
    assert not got["ok"] and got["type"] == "KvTransferError"
    assert got["elapsed"] < SHORT_TIMEOUT_S + MARGIN_S
    assert got["broken"] is True
    late = prefill.call("send", key=key, request_id="never", shape=KV_SHAPE, dtype="float32", seed=0)
    assert not late["ok"] and late["broken"] is True, late   # gloo dropped the pair when the recv timed out
    assert late["elapsed"] < SHORT_TIMEOUT_S + MARGIN_S
    again = decode.call("recv", key=key, request_id="again", shape=KV_SHAPE, dtype="float32", seed=0)
    assert not again["ok"] and "broken" in again["error"] and again["elapsed"] < 0.5
    assert_received(*transfer(decode, prefill, pair(decode, prefill), "re-paired", seed=5))


def test_close_does_not_wait_for_a_posted_recv(decode, prefill):
    key = pair(decode, prefill, timeout=SHORT_TIMEOUT_S)
    reply = decode.call("close_during_recv", key=key, request_id="dropped", shape=KV_SHAPE, dtype="float32")
    assert reply["ok"] and reply["close_s"] < 0.1 and reply["recv_done"], reply
    assert reply["recv_error"].startswith("KvTransferError") and reply["broken"] is True
    assert reply["elapsed"] < SHORT_TIMEOUT_S + MARGIN_S


def test_pairing_without_peer_times_out(decode):
    reply = decode.call("pair", key="pair/lonely", rank=1, port=decode.port, timeout=SHORT_TIMEOUT_S)
    assert not reply["ok"] and reply["type"] == "KvTransferError", reply
    assert reply["elapsed"] < SHORT_TIMEOUT_S + MARGIN_S


def test_decode_worker_started_later_pairs_with_running_prefill(ctx, decode, prefill, key):
    late = Peer(ctx, "decode-late")
    try:
        late.serve_store()
        late_key = pair(late, prefill)
        # Both decode ends wait at once; the prefill end serves the later pair first. Each receiver
        # rebuilds its own seed's tensor, so KV delivered to the wrong peer would not be equal.
        decode.submit("recv", key=key, request_id="to-first", shape=KV_SHAPE, dtype="float32", seed=21)
        late.submit("recv", key=late_key, request_id="to-late", shape=KV_SHAPE, dtype="float32", seed=22)
        to_late = prefill.call("send", key=late_key, request_id="to-late", shape=KV_SHAPE, dtype="float32",
                               seed=22)
        to_first = prefill.call("send", key=key, request_id="to-first", shape=KV_SHAPE, dtype="float32",
                                seed=21)
        assert_received(late.result(), to_late)
        assert_received(decode.result(), to_first)
    finally:
        late.stop()
    assert late.process.exitcode == 0


def test_store_server_reports_its_port():
    with KvStoreServer("127.0.0.1") as picked:
        assert picked.port > 0
    port = free_port()
    with KvStoreServer("127.0.0.1", port) as fixed:
        assert fixed.port == port and fixed.host == "127.0.0.1"

"""The KV store listens on its advertised address only; a pair forms only under its own key and only
with a peer that proves the worker secret (one that read the key from the store does not)."""

from __future__ import annotations

import re
import secrets
import socket
import time
from concurrent import futures
from datetime import timedelta

import psutil
import pytest
import torch
import torch.distributed as dist

from services.transfer import KvChannel, KvStoreServer, KvTransferError


_PAIR_KEY = re.compile(r"tandem/kv/(pair/[^/]+/[0-9a-f]+)/")


def listening_addresses(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def test_the_store_listens_on_its_host_only():
    with KvStoreServer("127.0.0.1") as server:
        assert listening_addresses(server.port) == {"127.0.0.1"}


def test_the_store_is_not_reachable_on_another_interface():
    outside = _non_loopback_address()
    if outside is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with KvStoreServer("127.0.0.1") as server:
        with pytest.raises(OSError):
            socket.create_connection((outside, server.port), timeout=2).close()


def test_a_peer_with_another_pair_key_never_reaches_the_receiver():
    """The receiver waits under its key; a peer that guesses wrong rendezvouses alone and fails."""
    with KvStoreServer("127.0.0.1") as server, futures.ThreadPoolExecutor(2) as pool:
        key = f"pair/test/{secrets.token_hex(16)}"
        receiver = pool.submit(KvChannel.connect, "127.0.0.1", server.port, key, 1, "cpu", 2.0)
        intruder = pool.submit(KvChannel.connect, "127.0.0.1", server.port, "pair/test/guess", 0, "cpu", 2.0)
        for joining in (receiver, intruder):
            with pytest.raises(KvTransferError):
                joining.result(timeout=30)


def test_a_peer_that_read_the_key_from_the_store_but_lacks_the_secret_is_refused():
    """The store is plain TCP: anyone reaching it can list the pair key. Without the worker secret
    the intruder fails the hello, and the receiver never hands out a channel to take KV on."""
    with KvStoreServer("127.0.0.1") as server, futures.ThreadPoolExecutor(1) as pool:
        key = f"pair/test/{secrets.token_hex(16)}"
        receiver = pool.submit(KvChannel.connect, "127.0.0.1", server.port, key, 1, "cpu", 3.0,
                               secret="the-worker-secret")
        listed = _listed_pair_key(server.port, key)
        assert listed == key                                   # what an outsider can read
        with pytest.raises(KvTransferError):
            KvChannel.connect("127.0.0.1", server.port, listed, 0, "cpu", 3.0, secret="a-guess")
        with pytest.raises(KvTransferError, match="did not prove the worker secret"):
            receiver.result(timeout=30)


def test_peers_with_the_same_secret_pair_and_move_kv():
    with KvStoreServer("127.0.0.1") as server, futures.ThreadPoolExecutor(1) as pool:
        key = f"pair/test/{secrets.token_hex(16)}"
        joining = pool.submit(KvChannel.connect, "127.0.0.1", server.port, key, 1, "cpu", 5.0, secret="s")
        sender = KvChannel.connect("127.0.0.1", server.port, key, 0, "cpu", 5.0, secret="s")
        receiver = joining.result(timeout=30)
        kv = torch.randn(2, 2, 3, 1, 4)
        receiving = pool.submit(receiver.recv, "r1", kv.shape, kv.dtype)
        sender.send("r1", kv)
        assert torch.equal(receiving.result(timeout=30), kv)
        sender.close(), receiver.close()


def _listed_pair_key(port: int, key: str) -> str:
    """The pair key as an unauthenticated store client finds it (waiting for the receiver's keys)."""
    client = dist.TCPStore("127.0.0.1", port, is_master=False, wait_for_workers=False,
                           timeout=timedelta(seconds=3))
    deadline = time.monotonic() + 10
    while not (found := [m for k in client.list_keys() if (m := _PAIR_KEY.match(k))]):
        assert time.monotonic() < deadline, "the receiver's keys never appeared"
        time.sleep(0.05)
    return found[0].group(1)


def _non_loopback_address() -> str | None:
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return None

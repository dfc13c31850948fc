"""The KV store listens on its advertised address only, and a pair forms only under its own key."""

from __future__ import annotations

import secrets
import socket
from concurrent import futures

import psutil
import pytest

from services.transfer import KvChannel, KvStoreServer, KvTransferError


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


def _non_loopback_address() -> str | None:
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return None

"""The decode worker's TCPStore: the rendezvous point of every pair it makes."""

from __future__ import annotations

import socket
from datetime import timedelta

import torch.distributed as dist


class KvStoreServer:
    """Owns the TCPStore master of one decode worker; pairs rendezvous under their own key prefix.

    ``host`` is the address peers dial and the only one the store listens on (never every
    interface: the socket is bound here and handed to the TCPStore); ``port`` is the bound port, so
    ``port=0`` picks a free one. The store outlives every channel made through it: close it only
    after the channels. It holds no KV, only rendezvous keys; a pair's keys live under its pair key,
    which only the authenticated gRPC Pair call carries (docs/architecture.md).
    """

    def __init__(self, host: str, port: int = 0, timeout_s: float = 30.0):
        self.host = host
        listener = socket.create_server((host, port), family=_family(host), backlog=128)
        self.port: int = listener.getsockname()[1]
        self._store: dist.TCPStore | None = dist.TCPStore(   # the store owns (and closes) the socket
            host, self.port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=timeout_s),
            master_listen_fd=listener.detach())

    @property
    def store(self) -> dist.TCPStore:
        """The master's own client. Calls on one store object are serialized, and a pairing blocks in
        ``wait`` on it, so channels should open their own client (``KvChannel.connect`` does)."""
        if self._store is None:
            raise RuntimeError("the KV store server is closed")
        return self._store

    def close(self) -> None:
        self._store = None   # dropping the last reference stops the server

    def __enter__(self) -> "KvStoreServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _family(host: str) -> socket.AddressFamily:
    return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]

"""Real worker-like processes for the channel tests, each driven by JSON commands over a pipe.

A ``Peer`` is one spawned process holding any number of ``KvChannel`` ends (by pair key) and,
for a decode peer, a ``KvStoreServer``. Commands run one at a time in the peer; two peers run
concurrently, which is how both ends of a pair meet. KV tensors never cross the pipe: both ends
rebuild the same tensor from ``(shape, dtype, seed)``, so the receiver checks bit-exactness itself.
"""

from __future__ import annotations

import json
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import torch

from services.transfer import KvChannel, KvStoreServer
from services.transfer.header import DTYPES

REPLY_TIMEOUT_S = 30.0


def make_kv(shape: list[int], dtype: str, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(DTYPES[dtype])


class Peer:
    """The test's handle on one peer process."""

    def __init__(self, ctx: Any, name: str):
        self.name = name
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve, args=(child,), name=name, daemon=True)
        self.process.start()
        child.close()
        self.port = 0   # of this peer's store, once it serves one

    def submit(self, op: str, **args: Any) -> None:
        self.conn.send_bytes(json.dumps({"op": op, **args}).encode())

    def result(self, timeout: float = REPLY_TIMEOUT_S) -> dict[str, Any]:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"peer {self.name} did not reply within {timeout}s")
        return json.loads(self.conn.recv_bytes())

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        self.submit(op, **args)
        return self.result()

    def serve_store(self) -> int:
        self.port = self.call("serve")["port"]
        return self.port

    def stop(self) -> None:
        try:
            self.submit("exit")
        except OSError:
            pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()


def serve(conn: Connection) -> None:
    """The peer's loop: one JSON command in, one JSON reply out, until ``exit``."""
    state = _PeerState()
    try:
        while True:
            cmd = json.loads(conn.recv_bytes())
            op = cmd.pop("op")
            if op == "exit":
                return
            start = time.monotonic()
            try:
                reply = {"ok": True, **getattr(state, op)(**cmd)}
            except Exception as e:   # reported, so a failing test shows it; KvTransferError expected
                reply = {"ok": False, "type": type(e).__name__, "error": str(e)}
            channel = state.channels.get(cmd.get("key", ""))
            reply.update(elapsed=time.monotonic() - start, broken=channel.broken if channel else None)
            conn.send_bytes(json.dumps(reply).encode())
    finally:
        state.close()


class _PeerState:
    def __init__(self) -> None:
        self.server: KvStoreServer | None = None
        self.channels: dict[str, KvChannel] = {}

    def serve(self) -> dict[str, Any]:
        self.server = KvStoreServer("127.0.0.1")
        return {"port": self.server.port}

    def pair(self, key: str, rank: int, port: int, timeout: float) -> dict[str, Any]:
        self.channels[key] = KvChannel.connect("127.0.0.1", port, key, rank, "cpu", timeout)
        return {"backend": self.channels[key].backend}

    def send(self, key: str, request_id: str, shape: list[int], dtype: str, seed: int,
             corrupt: bool = False) -> dict[str, Any]:
        kv = make_kv(shape, dtype, seed)
        return {"nbytes": self.channels[key].send(request_id, kv, corrupt=corrupt)}

    def refuse(self, key: str, request_id: str, reason: str) -> dict[str, Any]:
        self.channels[key].refuse(request_id, reason)
        return {}

    def recv(self, key: str, request_id: str, shape: list[int], dtype: str, seed: int) -> dict[str, Any]:
        kv = self.channels[key].recv(request_id, tuple(shape), DTYPES[dtype])
        expected = make_kv(shape, dtype, seed)
        equal = kv.dtype == expected.dtype and torch.equal(kv.view(torch.uint8), expected.view(torch.uint8))
        return {"equal": equal, "nbytes": kv.numel() * kv.element_size()}

    def close_during_recv(self, key: str, request_id: str, shape: list[int], dtype: str) -> dict[str, Any]:
        """Close the channel while a recv is posted on it, as an owner dropping a pair does."""
        channel, outcome = self.channels[key], {}

        def receive() -> None:
            try:
                channel.recv(request_id, tuple(shape), DTYPES[dtype])
            except Exception as e:
                outcome["recv_error"] = f"{type(e).__name__}: {e}"

        receiving = threading.Thread(target=receive)
        receiving.start()
        time.sleep(0.2)
        start = time.monotonic()
        channel.close()
        outcome["close_s"] = time.monotonic() - start
        receiving.join(2 * channel.timeout.total_seconds())
        return {**outcome, "recv_done": not receiving.is_alive()}

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        if self.server is not None:
            self.server.close()

"""One end of one prefill<->decode pair: a 2-rank torch.distributed group that moves verified KV.

Rank 0 is the prefill worker (``SENDER``), rank 1 the decode worker (``RECEIVER``). The group is
built directly on a ``PrefixStore`` of the decode worker's TCPStore, never through
``init_process_group``, so pairs come and go in running processes. The device picks the backend:
gloo for CPU tensors, NCCL for CUDA; only the group's construction differs, every op is the same.

Rules:
- One operation at a time per channel, on both ends (a lock), so the messages of two transfers
  never interleave; NCCL matches a send to a recv by order alone.
- Every wait is bounded by the channel's timeout. A timeout or a socket error marks the channel
  ``broken`` (gloo also closes the connection when an op times out); its owner closes it and pairs
  again under a new key. ``close`` never waits; a gloo op already posted still runs to its timeout
  (gloo cannot cancel one), an NCCL op is aborted.
- A transfer whose header or checksum does not verify still consumed its whole message, so the
  channel stays usable; only that transfer's KV is rejected.
- Trust: the store is plain TCP and anyone who reaches it can list its keys, pair key included
  (``TCPStore.list_keys``). So the pair key alone proves nothing: in the hello each end sends
  HMAC-SHA256(worker secret, pair key and its rank), the sender first, and each checks the other's
  (constant time). A peer without the worker secret (one that did not come through the
  authenticated gRPC ``Pair``) fails the hello and the receiver never takes KV from it. Workers
  without a secret (``TANDEM_INSECURE_WORKERS``) prove nothing this way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist

from .checksums import as_bytes, checksum
from .errors import KvTransferError
from .header import HEADER_BYTES, VERSION, KvHeader

SENDER, RECEIVER = 0, 1
_TAG_HELLO, _TAG_HEADER, _TAG_PAYLOAD = 0, 1, 2   # gloo matches by tag too; NCCL ignores tags
_LOCK_WAITS = 3                                   # an operation holds the lock for at most ~2 op timeouts


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


class KvChannel:
    """One end of a pair. The prefill end calls ``send``/``refuse``, the decode end ``recv``.

    The sender owns the KV it passes to ``send`` (it is only read); the receiver owns the tensor
    ``recv`` returns, and only a tensor that ``recv`` returned has been verified.
    """

    def __init__(self, pg: dist.ProcessGroup, store: dist.Store, pair_key: str, rank: int,
                 device: torch.device, timeout_s: float, secret: str = ""):
        """Use ``connect``."""
        self.pair_key = pair_key
        self._secret = secret.encode()
        self.rank = rank
        self.device = device
        self.backend = backend_for(device)
        self.timeout = timedelta(seconds=timeout_s)
        self._pg: dist.ProcessGroup | None = pg
        self._store: dist.Store | None = store   # NCCL reads it when it opens its communicator
        self._lock = threading.Lock()
        self._broken = False

    @classmethod
    def connect(cls, store_host: str, store_port: int, pair_key: str, rank: int,
                device: torch.device | str, timeout_s: float, store: dist.Store | None = None,
                bind_host: str = "127.0.0.1", secret: str = "") -> KvChannel:
        """Join pair ``pair_key`` as ``rank``; returns once both ends exchanged a hello over the group.

        Both ends call this concurrently; it raises ``KvTransferError`` within about ``timeout_s``
        if the other end does not show up or speaks another backend or version. By default it opens
        its own client of the store; pass ``store`` only if no other thread uses that object.
        ``bind_host`` is this end's advertised address: gloo listens for its peer there only (NCCL
        picks its interface from ``NCCL_SOCKET_IFNAME``). ``secret``: the worker secret both ends
        prove in the hello; a peer that proves another is refused (``KvTransferError``).
        """
        if rank not in (SENDER, RECEIVER) or not pair_key:
            raise ValueError(f"rank must be 0 or 1 and pair_key non-empty, got {rank}, {pair_key!r}")
        device = _resolve(device)
        deadline = time.monotonic() + timeout_s
        try:
            if store is None:
                store = dist.TCPStore(store_host, store_port, is_master=False, wait_for_workers=False,
                                      timeout=timedelta(seconds=timeout_s))
            scoped = dist.PrefixStore(f"tandem/kv/{pair_key}", store)
            _agree(scoped, rank, backend_for(device), _left(deadline))
            pg = _process_group(dist.PrefixStore("pg", scoped), rank, device, _left(deadline),
                                timedelta(seconds=timeout_s), bind_host)
        except KvTransferError:
            raise
        except RuntimeError as e:
            raise KvTransferError(f"pairing {pair_key!r} as rank {rank} through {store_host}:{store_port} "
                                  f"failed: {_first_line(e)}") from e
        channel = cls(pg, store, pair_key, rank, device, timeout_s, secret)
        try:
            channel._hello(_left(deadline))
        except KvTransferError:
            channel.close()
            raise
        return channel

    @property
    def broken(self) -> bool:
        """True once the channel can no longer transfer: an op failed or timed out, or it was closed."""
        return self._broken or self._pg is None

    def send(self, request_id: str, kv: torch.Tensor, corrupt: bool = False,
             start_token: int = 0) -> int:
        """Send ``kv`` (``[layers, 2, tokens, kv_heads, head_dim]``, contiguous, on this channel's
        device) as ``request_id``'s tokens from ``start_token`` on; returns the payload bytes once
        the receiver has them.

        ``corrupt`` is a test hook: one payload byte is flipped after the checksum was taken, so the
        receiver must reject the transfer.
        """
        self._require(SENDER, "send")
        if kv.device != self.device:
            raise ValueError(f"KV is on {kv.device}, this channel sends from {self.device}")
        header = KvHeader.for_tensor(request_id, kv, start_token)
        payload = _corrupted(kv) if corrupt else kv
        with self._exclusive(f"send of {request_id!r}"):
            self._p2p("send", header.encode().to(self.device), _TAG_HEADER, f"header send of {request_id!r}")
            self._p2p("send", as_bytes(payload), _TAG_PAYLOAD, f"payload send of {request_id!r}")
        return header.nbytes

    def refuse(self, request_id: str, reason: str) -> None:
        """Tell a waiting receiver that no KV will come for ``request_id`` (expired, aborted).

        The receiver's ``recv`` raises at once with ``reason`` and the pair stays usable, where
        silence would cost it a timeout and the pair.
        """
        self._require(SENDER, "refuse")
        header = KvHeader.refusal(request_id, reason)
        with self._exclusive(f"refusal of {request_id!r}"):
            self._p2p("send", header.encode().to(self.device), _TAG_HEADER, f"refusal of {request_id!r}")

    def recv(self, request_id: str, shape: tuple[int, ...], dtype: torch.dtype,
             start_token: int = 0) -> torch.Tensor:
        """Receive and verify the KV of ``request_id``, expected as ``shape`` and ``dtype`` and
        covering its tokens from ``start_token`` on.

        Raises ``KvTransferError`` if the sender refused, the header does not match the expectation,
        or the checksum fails (the channel stays usable), or on a timeout or a failed peer (the
        channel is broken).
        """
        self._require(RECEIVER, "recv")
        what = f"KV of {request_id!r}"
        with self._exclusive(what):
            header = self._recv_header(what)
            if header.error:
                raise KvTransferError(f"{what}: the sender refused {header.request_id!r}: {header.error}")
            problems = header.mismatches(request_id, shape, dtype, start_token)
            if problems and header.nbytes > math.prod(shape) * dtype.itemsize:
                # allocate no more than the caller expected; the payload stays unread
                raise self._break(f"{what} rejected: {'; '.join(problems)}")
            payload = torch.empty(header.shape, dtype=header.torch_dtype, device=self.device)
            self._p2p("recv", as_bytes(payload), _TAG_PAYLOAD, f"payload recv of {what}")
        if problems:
            raise KvTransferError(f"{what} rejected, header does not match: {'; '.join(problems)}")
        algo, value = checksum(payload, header.checksum_algo)
        if value != header.checksum:
            raise KvTransferError(f"{what} rejected: checksum mismatch ({algo}: header says "
                                  f"{header.checksum:#x}, payload has {value:#x})")
        return payload

    def close(self) -> None:
        """Drop the group now; idempotent, never waits. An op in flight fails: NCCL's at once (the
        group is aborted), gloo's at its timeout (gloo cannot cancel a posted op)."""
        pg, self._pg, self._store = self._pg, None, None
        if pg is None or self._broken:   # a broken group was aborted already
            return
        if self._lock.acquire(blocking=False):
            try:
                pg.shutdown()
            finally:
                self._lock.release()
        else:
            pg.abort()

    def __enter__(self) -> KvChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "broken" if self.broken else "ok"
        return f"KvChannel({self.pair_key!r}, rank={self.rank}, {self.backend} on {self.device}, {state})"

    def _hello(self, timeout: timedelta) -> None:
        """Each end proves the worker secret; the receiver checks before it answers."""
        with self._exclusive("hello"):
            if self.rank == SENDER:
                self._p2p("send", self._proof(self.rank), _TAG_HELLO, "hello", timeout)
            self._check_proof(timeout)
            if self.rank == RECEIVER:
                self._p2p("send", self._proof(self.rank), _TAG_HELLO, "hello", timeout)

    def _proof(self, rank: int) -> torch.Tensor:
        digest = hmac.new(self._secret, f"tandem-kv-hello/{self.pair_key}/{rank}".encode(), hashlib.sha256)
        return torch.frombuffer(bytearray(digest.digest()), dtype=torch.int64).to(self.device)

    def _check_proof(self, timeout: timedelta) -> None:
        got = torch.zeros(4, dtype=torch.int64, device=self.device)
        self._p2p("recv", got, _TAG_HELLO, "hello", timeout)
        expected = self._proof(1 - self.rank)
        if not hmac.compare_digest(got.cpu().numpy().tobytes(), expected.cpu().numpy().tobytes()):
            raise self._break(f"pair {self.pair_key!r}: the peer did not prove the worker secret")

    def _recv_header(self, what: str) -> KvHeader:
        buf = torch.empty(HEADER_BYTES, dtype=torch.uint8, device=self.device)
        self._p2p("recv", buf, _TAG_HEADER, f"header recv of {what}")
        try:
            return KvHeader.decode(buf)
        except KvTransferError as e:   # without a valid header the payload's length is unknown
            raise self._break(str(e)) from None

    def _require(self, rank: int, op: str) -> None:
        if self.rank != rank:
            raise ValueError(f"{op} is for rank {rank}; this end of {self.pair_key!r} is rank {self.rank}")

    @contextmanager
    def _exclusive(self, what: str) -> Iterator[None]:
        if not self._lock.acquire(timeout=_LOCK_WAITS * self.timeout.total_seconds()):
            raise KvTransferError(f"{what}: pair {self.pair_key!r} stayed busy with another transfer")
        try:
            if self.broken:
                state = "broken" if self._broken else "closed"
                raise KvTransferError(f"{what}: pair {self.pair_key!r} is {state}; pair again")
            yield
        finally:
            self._lock.release()

    def _p2p(self, op: str, tensor: torch.Tensor, tag: int, what: str,
             timeout: timedelta | None = None) -> None:
        """Run one send or recv with the peer to completion, or mark the channel broken and raise."""
        timeout = timeout or self.timeout
        pg = self._pg
        if pg is None:
            raise KvTransferError(f"{what}: pair {self.pair_key!r} was closed")
        start = pg.send if op == "send" else pg.recv
        try:
            completed = start([tensor], 1 - self.rank, tag).wait(timeout)   # posting fails on a dead pair
        except RuntimeError as e:
            raise self._break(f"{what} on pair {self.pair_key!r} failed: {_first_line(e)}") from e
        if not completed:
            raise self._break(f"{what} on pair {self.pair_key!r} did not complete within "
                              f"{timeout.total_seconds():g}s")

    def _break(self, message: str) -> KvTransferError:
        """Mark the channel broken and abort its group now, while the lock is held: NCCL's watchdog
        would otherwise tear the process down once an abandoned op reaches the group's timeout."""
        self._broken = True
        pg = self._pg
        if pg is not None:
            pg.abort()
        return KvTransferError(f"{message}; channel broken")


def _agree(store: dist.Store, rank: int, backend: str, timeout: timedelta) -> None:
    """Both ends publish what they speak and read the other's, so a mismatch fails both at once."""
    mine = {"backend": backend, "version": VERSION}
    store.set(f"hello/{rank}", json.dumps(mine))
    peer_key = f"hello/{1 - rank}"
    store.wait([peer_key], timeout)
    peer = json.loads(store.get(peer_key))
    if peer != mine:
        raise KvTransferError(f"cannot pair: the peer speaks {peer}, this end {mine}")


def _process_group(store: dist.Store, rank: int, device: torch.device, rendezvous: timedelta,
                   op_timeout: timedelta, bind_host: str) -> dist.ProcessGroup:
    if backend_for(device) == "gloo":
        options = dist.ProcessGroupGloo._Options()
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=bind_host)]
        options._timeout = rendezvous
        return dist.ProcessGroupGloo(store, rank, 2, options)
    options = dist.ProcessGroupNCCL.Options()   # NCCL connects lazily, at the hello
    options._timeout = 2 * op_timeout + timedelta(seconds=10)   # our own waits give up first
    return dist.ProcessGroupNCCL(store, rank, 2, options)


def _resolve(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"KV transfer runs on cpu (gloo) or cuda (nccl), not {device}")
    return device


def _left(deadline: float) -> timedelta:
    left = deadline - time.monotonic()
    if left <= 0:
        raise KvTransferError("pairing timed out")
    return timedelta(seconds=left)


def _corrupted(kv: torch.Tensor) -> torch.Tensor:
    """A copy of ``kv`` with its middle byte inverted: any checksum here detects a one-byte error."""
    bad = kv.clone()
    data = as_bytes(bad)
    data[data.numel() // 2] ^= 0xFF
    return bad


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__

"""The decode worker's side of the KV handoff: pair on demand, then pull a request's KV.

Per prefill worker there is one ``KvChannel`` (rank 1 here, rank 0 there), made on first use:
this worker hosts the TCPStore, asks the prefill worker to ``Pair`` and joins concurrently. A pull
holds that channel's lock for the whole transfer, so transfers on one pair never interleave (NCCL
needs that order; gloo is happy either way):

    decode (this)                         prefill
      | post recv(header, payload) ......>|
      |---- SendKv(request_id, start) ---->| send held KV from token ``start``
      |<===== header + payload (t.d.) ====| send
      | verify header + checksum          |
      |<--- SendKvReply ------------------|

A channel whose transfer timed out or whose peer failed is dropped and re-paired next time.

Resources: connects (``KvChannel.connect``) and receives run in two separate pools of ``max_peers``
threads each; a pull holds its peer's lock, so each pool runs at most one task per peer and neither
kind can queue behind the other. A peer (its pair, gRPC channel and lock) whose prefill worker left
the registry is closed and forgotten by ``retain``, which ``PeerReaper`` calls every few seconds —
unless a request is ``using`` it: a worker whose entry lapsed under load (a late heartbeat) while
its calls run keeps its channel, and a dead one's calls fail, end, and let it go on a later round.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import secrets
from collections import Counter
from concurrent import futures
from dataclasses import dataclass
from typing import Iterator

import grpc
import torch

from protos.tandem.v1 import worker_pb2 as pb
from protos.tandem.v1 import worker_pb2_grpc as rpc
from services.engine import omp
from services.engine.config import DTYPES
from services.secret import secret_channel
from services.transfer import KvChannel, KvStoreServer, KvTransferError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pulled:
    kv: torch.Tensor
    nbytes: int
    seconds: float
    backend: str


class KvPuller:
    def __init__(self, worker_id: str, store: KvStoreServer, device: torch.device, timeout_s: float,
                 *, max_peers: int = 32, secret: str = ""):
        self.worker_id = worker_id
        self.secret = secret
        self.store = store
        self.device = device
        self.timeout_s = timeout_s
        self._channels: dict[str, KvChannel] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._grpc: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, rpc.PrefillServiceStub] = {}
        self._users: Counter[str] = Counter()   # requests using each peer now (under _guard)
        self._connects = omp.executor(max_peers, "kv-connect")
        self._receives = omp.executor(max_peers, "kv-recv")

    def stub(self, address: str) -> rpc.PrefillServiceStub:
        with self._guard:
            if address not in self._stubs:
                channel = secret_channel(address, self.secret, [("grpc.max_receive_message_length", 64 << 20)])
                self._grpc[address], self._stubs[address] = channel, rpc.PrefillServiceStub(channel)
            return self._stubs[address]

    @contextlib.contextmanager
    def using(self, address: str) -> Iterator[rpc.PrefillServiceStub]:
        """The peer's stub, kept open (``retain`` passes it over) until the block ends."""
        with self._guard:
            self._users[address] += 1
        try:
            yield self.stub(address)
        finally:
            with self._guard:
                self._users[address] -= 1
                if not self._users[address]:
                    del self._users[address]

    def peers(self) -> int:
        """Prefill workers this puller holds anything for (a pair, a gRPC channel or a lock)."""
        with self._guard:
            return len(self._grpc.keys() | self._channels.keys() | self._locks.keys())

    def retain(self, addresses: set[str]) -> None:
        """Close and forget every peer not at one of ``addresses`` (the live prefill workers)
        that no request is ``using``."""
        with self._guard:
            gone = {a for a in (self._grpc.keys() | self._channels.keys() | self._locks.keys()) - addresses
                    if not self._users[a]}    # in use: a later round forgets it
        for address in gone:
            with self._lock_for(address):     # waits for a pull in progress on it
                with self._guard:
                    if self._users[address]:  # a request took it up meanwhile
                        continue
                    grpc_channel = self._grpc.pop(address, None)
                    self._stubs.pop(address, None)
                    self._locks.pop(address, None)
                channel = self._channels.pop(address, None)
            if channel is not None:
                channel.close()
            if grpc_channel is not None:
                grpc_channel.close()
            log.info("forgot prefill worker %s (left the registry)", address)

    def pull(self, address: str, request_id: str, kv: pb.KvDescriptor, start_token: int = 0) -> Pulled:
        """Receive and verify ``request_id``'s KV from the prefill worker at ``address``: the
        tokens from ``start_token`` on (this worker holds the ones before)."""
        shape = (kv.num_layers, 2, kv.num_tokens - start_token, kv.num_kv_heads, kv.head_dim)
        dtype = DTYPES.get(kv.dtype)
        if dtype is None:
            raise KvTransferError(f"unknown KV dtype {kv.dtype!r}")
        with self._lock_for(address):
            channel = self._channel(address)
            start = time.perf_counter()
            receiving = self._receives.submit(channel.recv, request_id, shape, dtype, start_token)
            try:
                self.stub(address).SendKv(pb.SendKvRequest(request_id=request_id, decode_worker_id=self.worker_id,
                                                           start_token=start_token), timeout=self.timeout_s)
            except grpc.RpcError as e:
                self._settle(address, channel, receiving)
                raise KvTransferError(f"prefill worker did not send: {e.details()}") from e
            try:
                tensor = receiving.result(timeout=self.timeout_s + 1)
            except futures.TimeoutError as e:
                self._drop(address, channel)
                raise KvTransferError(f"KV of {request_id} did not arrive within {self.timeout_s}s") from e
            except KvTransferError:
                if channel.broken:
                    self._drop(address, channel)
                raise
            nbytes = tensor.numel() * tensor.element_size()
            return Pulled(tensor, nbytes, time.perf_counter() - start, channel.backend)

    def _settle(self, address: str, channel: KvChannel, receiving: futures.Future) -> None:
        """After a failed SendKv: keep the pair only if the peer answered our recv with a refusal."""
        try:
            receiving.result(timeout=2.0)
        except KvTransferError:
            pass
        except futures.TimeoutError:
            pass
        if not receiving.done() or channel.broken:
            self._drop(address, channel)   # our posted recv can no longer be matched reliably

    def _lock_for(self, address: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(address, threading.Lock())

    def _channel(self, address: str) -> KvChannel:
        channel = self._channels.get(address)
        if channel is not None and not channel.broken:
            return channel
        key = f"pair/{self.worker_id}/{secrets.token_hex(16)}"   # fresh; the hello proves the secret
        joining = self._connects.submit(KvChannel.connect, self.store.host, self.store.port, key, rank=1,
                                        device=self.device, timeout_s=self.timeout_s, bind_host=self.store.host,
                                        secret=self.secret)
        try:
            self.stub(address).Pair(pb.PairRequest(
                decode_worker_id=self.worker_id, store_host=self.store.host, store_port=self.store.port,
                pair_key=key, timeout_seconds=self.timeout_s), timeout=self.timeout_s + 5)
            channel = joining.result(timeout=self.timeout_s + 5)
        except (grpc.RpcError, futures.TimeoutError) as e:
            detail = e.details() if isinstance(e, grpc.RpcError) else "timed out"
            raise KvTransferError(f"could not pair with prefill worker {address}: {detail}") from e
        self._channels[address] = channel
        log.info("paired with prefill worker %s (%s)", address, channel.backend)
        return channel

    def _drop(self, address: str, channel: KvChannel) -> None:
        if self._channels.get(address) is channel:
            del self._channels[address]
        channel.close()

    def pairs_open(self) -> int:
        return sum(not c.broken for c in list(self._channels.values()))

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        for pool in (self._connects, self._receives):
            pool.shutdown(wait=False, cancel_futures=True)


class PeerReaper:
    """Every ``interval_s``, ``puller.retain`` the prefill workers ``live()`` names (a daemon
    thread); a failing ``live()`` (Redis down) forgets nothing."""

    def __init__(self, puller: KvPuller, live, interval_s: float):
        self.puller, self.live, self.interval_s = puller, live, interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="kv-peer-reaper")

    def start(self) -> "PeerReaper":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def reap(self) -> None:
        try:
            addresses = {w.address for w in self.live()}
        except Exception as e:   # Redis unreachable: keep every peer until it answers again
            log.warning("could not read the registry to forget departed peers: %s", e)
            return
        self.puller.retain(addresses)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            self.reap()

"""KvPuller's resources: peers of prefill workers that left the (real Redis) registry are closed
and forgotten; connects and receives run in separate pools, so neither starves the other."""

from __future__ import annotations

import threading
from dataclasses import replace

import grpc
import pytest
import torch

from protos.tandem.v1 import worker_pb2 as pb
from services.decode.handoff import KvPuller, PeerReaper
from services.registry import WorkerRegistry
from tandem.redis_server import EmbeddedRedis
from tests.services.test_registry import worker


class FakePair:
    broken = False

    def __init__(self):
        self.closed = 0

    def close(self):
        self.closed += 1


@pytest.fixture
def registry(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield WorkerRegistry(server.client(timeout=1))


def test_peers_whose_workers_left_the_registry_are_closed_and_forgotten(registry):
    puller = KvPuller("d0", store=None, device=torch.device("cpu"), timeout_s=1)
    addresses = {"p0": "127.0.0.1:1", "p1": "127.0.0.1:2"}
    for name, address in addresses.items():
        registry.publish(replace(worker(name, role="prefill"), address=address))
    stubs = {name: puller.stub(address) for name, address in addresses.items()}
    pair = puller._channels[addresses["p1"]] = FakePair()
    puller._lock_for(addresses["p1"])
    reaper = PeerReaper(puller, lambda: registry.live("prefill"), interval_s=60)
    reaper.reap()
    assert puller.peers() == 2 and pair.closed == 0        # both still live: nothing forgotten
    registry.remove("p1")
    reaper.reap()
    assert puller.peers() == 1 and pair.closed == 1
    with pytest.raises(ValueError, match="closed channel"):  # its gRPC channel is closed too
        stubs["p1"].Status(pb.StatusRequest(), timeout=1)
    with pytest.raises(grpc.RpcError):                       # the live one still works (nobody listens)
        stubs["p0"].Status(pb.StatusRequest(), timeout=1)
    puller.close()


def test_a_peer_in_use_is_kept_until_its_requests_end(registry):
    # a prefill worker whose entry lapsed (a late heartbeat) while requests call it
    puller = KvPuller("d0", store=None, device=torch.device("cpu"), timeout_s=1)
    reaper = PeerReaper(puller, lambda: registry.live("prefill"), interval_s=60)
    with puller.using("127.0.0.1:1") as stub:
        reaper.reap()
        assert puller.peers() == 1
        with pytest.raises(grpc.RpcError):                   # still open (nobody listens)
            stub.Status(pb.StatusRequest(), timeout=1)
    reaper.reap()
    assert puller.peers() == 0
    puller.close()


def test_a_registry_it_cannot_read_forgets_nothing():
    puller = KvPuller("d0", store=None, device=torch.device("cpu"), timeout_s=1)
    puller.stub("127.0.0.1:1")

    def down():
        raise ConnectionError("redis down")
    PeerReaper(puller, down, interval_s=60).reap()
    assert puller.peers() == 1
    puller.close()


def test_connects_that_hang_do_not_starve_receives():
    puller = KvPuller("d0", store=None, device=torch.device("cpu"), timeout_s=1, max_peers=4)
    release = threading.Event()
    hung = [puller._connects.submit(release.wait, 30) for _ in range(8)]   # more than the pool holds
    try:
        assert puller._receives.submit(lambda: "received").result(timeout=2) == "received"
    finally:
        release.set()
    assert all(f.result(timeout=5) for f in hung)
    puller.close()

"""The closed internal network on the real ``tandem up`` stack: worker gRPC needs the secret, and
the KV store listens on the advertised (loopback) address only."""

from __future__ import annotations

import grpc
import psutil
import pytest

from protos.tandem.v1 import worker_pb2 as pb
from protos.tandem.v1 import worker_pb2_grpc as rpc
from services.secret import METADATA_KEY

pytestmark = pytest.mark.slow

@pytest.mark.parametrize("metadata", [None, ((METADATA_KEY, "guess"),)])
@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_a_raw_grpc_call_without_the_secret_is_refused(stack, role, metadata):
    [worker] = stack.registry().live(role)
    with grpc.insecure_channel(worker.address) as channel:
        stub = rpc.PrefillServiceStub(channel) if role == "prefill" else rpc.DecodeServiceStub(channel)
        calls = [lambda: stub.Status(pb.StatusRequest(), timeout=5, metadata=metadata),
                 lambda: stub.Abort(pb.AbortRequest(request_id="victim"), timeout=5, metadata=metadata)]
        if role == "prefill":     # pairing: the only way to a KV channel (its hello proves the secret)
            calls.append(lambda: stub.Pair(pb.PairRequest(decode_worker_id="intruder", store_host="127.0.0.1",
                                                          store_port=1, pair_key="pair/x/y", timeout_seconds=1),
                                           timeout=5, metadata=metadata))
        else:                     # arbitrary token ids straight to the model, past every gateway check
            calls.append(lambda: list(stub.Generate(pb.GenerateRequest(request_id="raw", prompt_token_ids=[1, 2]),
                                                    timeout=5, metadata=metadata)))
        for call in calls:
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_stack_itself_carries_the_secret(stack):
    assert [s.pid > 0 for s in stack.worker_status("prefill") + stack.worker_status("decode")] == [True, True]


def test_the_kv_store_listens_on_loopback_only(stack):
    [decode] = stack.registry().live("decode")
    host, port = decode.kv_store.rsplit(":", 1)
    assert host == "127.0.0.1"
    listening = {c.laddr.ip for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == int(port)}
    assert listening == {"127.0.0.1"}


def test_no_worker_listens_on_every_interface(stack):
    """gRPC, metrics, the KV store and gloo's pair sockets: none on 0.0.0.0 or ::."""
    stack.client().chat.completions.create(model="SmolLM2-135M-Instruct", max_tokens=2,
                                           messages=[{"role": "user", "content": "hi"}])   # pairs
    for w in stack.registry().live():
        wide = [c.laddr for c in psutil.Process(w.pid).net_connections("tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr.ip in ("0.0.0.0", "::")]
        assert not wide, (w.role, wide)

"""``tandem up --colocated``: one worker does prefill and decode; same API, same greedy answers."""

from __future__ import annotations

import pytest

from tandem.up import UpConfig, cpu_split
from tests.e2e.conftest import start_up, stop_up

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "Name three famous painters and one work by each."}]


@pytest.fixture(scope="module")
def colocated(tmp_path_factory):
    s = start_up(tmp_path_factory.mktemp("tandem-colocated"), args=["--colocated"])
    yield s
    stop_up(s)


def test_colocated_serves_the_same_greedy_answer_without_kv_handoff(colocated, stack):
    assert [w.role for w in colocated.registry().live()] == ["colocated"]
    raw = colocated.client().chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=30)
    r = raw.parse()
    assert raw.headers["x-tandem-prefill-pid"] == raw.headers["x-tandem-decode-pid"]
    assert raw.headers["x-tandem-kv-bytes"] == "0"
    assert len(r.usage.model_extra["decode_time_arr"]) == r.usage.completion_tokens - 1
    pd = stack.client().chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=30)
    assert r.choices[0].message.content == pd.choices[0].message.content


def test_the_colocated_worker_gets_every_usable_cpu(colocated):
    (placement,) = cpu_split(UpConfig(colocated=True)).placements("colocated")
    assert colocated.worker_placements("colocated") == [(placement.cpus, placement.threads)]
    assert placement.threads == len(placement.cpus) >= 1


def test_colocated_worker_refuses_a_prefill_address_and_hosts_no_kv_store(colocated):
    import grpc

    from protos.tandem.v1 import worker_pb2 as pb
    from protos.tandem.v1 import worker_pb2_grpc as rpc
    from services import wire
    from services.engine import SamplingParams

    [worker] = colocated.registry().live()
    assert worker.kv_store == ""
    with colocated.channel(worker.address) as channel:
        call = rpc.DecodeServiceStub(channel).Generate(pb.GenerateRequest(
            request_id="colocated-bad", prompt_token_ids=[1, 2, 3], prefill_address="127.0.0.1:1",
            sampling=wire.sampling_to_proto(SamplingParams(max_tokens=4, temperature=0))), timeout=30)
        with pytest.raises(grpc.RpcError) as e:
            list(call)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(e.value.trailing_metadata())[wire.PARAM_KEY] == "prefill_address"

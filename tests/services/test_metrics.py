"""Worker metrics over real gRPC on a tiny random-weight engine: what each role counts, and when.

The counts must add up to the ``usage`` a client gets (services/metrics.py says who counts what);
the live-stack check of the same rule is tests/e2e/test_observability.py.
"""

from contextlib import contextmanager
from urllib.request import urlopen

import grpc
import pytest
import torch

from protos.tandem.v1 import worker_pb2 as pb
from protos.tandem.v1 import worker_pb2_grpc as rpc
from services import wire
from services.decode.handoff import Pulled
from services.decode.server import DecodeServicer
from services.engine import EngineConfig, LLMEngine, SamplingParams
from services.engine.loop import EngineLoop
from services.metrics import WorkerMetrics, handoff_failure_reason, serve
from services.prefill.server import PrefillServicer
from services.transfer import KvTransferError
from services.worker import WorkerConfig, grpc_server
from tests.services.decode.test_server import FakePrefill, FakePuller, held_reply


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory) -> LLMEngine:
    config = EngineConfig(model=str(tiny_model_dir), kv_cache_bytes=1 << 20, block_size=4)
    return LLMEngine(config, tmp_path_factory.mktemp("cache"))


@contextmanager
def worker(engine: LLMEngine, role: str, puller=None):
    """(stub, metrics) of a decode/colocated or prefill servicer on ``engine``."""
    loop = EngineLoop(engine).start()
    config = WorkerConfig(role=role, worker_id=f"{role}-test", request_timeout_s=10)
    metrics = WorkerMetrics(engine.model_name, role, config.worker_id).bind(engine)
    server, port = grpc_server(config)
    if role == "prefill":
        rpc.add_PrefillServiceServicer_to_server(PrefillServicer(loop, config, metrics), server)
    else:
        rpc.add_DecodeServiceServicer_to_server(DecodeServicer(loop, config, puller, metrics), server)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = (rpc.PrefillServiceStub if role == "prefill" else rpc.DecodeServiceStub)(channel)
    try:
        yield stub, metrics
    finally:
        channel.close()
        server.stop(0)
        loop.stop()


def value(metrics: WorkerMetrics, name: str, **labels) -> float:
    base = {"model_name": metrics._labels["model_name"], "role": metrics.role,
            "worker_id": metrics._labels["worker_id"]}
    return metrics.registry.get_sample_value(f"tandem:{name}", base | labels) or 0.0


def generate(stub, engine, prefill_address="", rid="m1", max_tokens=6) -> list[pb.TokenEvent]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    req = pb.GenerateRequest(request_id=rid, prompt_token_ids=engine.chat_prompt("hi"),
                             sampling=wire.sampling_to_proto(params), prefill_address=prefill_address)
    return list(stub.Generate(req, timeout=30))


def test_a_colocated_worker_counts_the_whole_request_as_the_client_sees_it(engine):
    with worker(engine, "colocated") as (stub, m):
        final = generate(stub, engine)[-1]
    assert final.completion_tokens == 6
    assert value(m, "generation_tokens_total") == final.completion_tokens
    assert value(m, "prompt_tokens_total") == final.prompt_tokens
    assert value(m, "prompt_tokens_by_source_total", source="local_compute") + \
        value(m, "prompt_tokens_by_source_total", source="local_cache_hit") == final.prompt_tokens
    assert value(m, "request_success_total", finished_reason="length") == 1
    assert value(m, "inter_token_latency_seconds_count") == final.completion_tokens - 1
    for stage in ("time_to_first_token", "e2e_request_latency", "request_queue_time",
                  "request_prefill_time", "request_decode_time", "request_inference_time"):
        assert value(m, f"{stage}_seconds_count") == 1, stage
    assert value(m, "num_requests_running") == 0 and value(m, "kv_cache_usage_perc") == 0


class SlicingPuller(FakePuller):
    """Pulls only the tokens this worker did not have cached, as the real puller does."""

    def pull(self, address, request_id, kv, start_token=0):
        part = self.kv[:, :, start_token:].contiguous()
        self.pulled = part.nbytes
        return Pulled(part, part.nbytes, 0.001, "gloo")


def test_a_decode_worker_counts_the_imported_prompt_and_the_tokens_after_the_first(engine):
    prompt = len(engine.chat_prompt("hi"))
    puller = SlicingPuller(FakePrefill(held_reply(engine, prompt)), kv=torch.zeros(engine.kv_shape(prompt)))
    with worker(engine, "decode", puller) as (stub, m):
        final = generate(stub, engine, prefill_address="prefill:1")[-1]
    assert value(m, "generation_tokens_total") == final.completion_tokens - 1   # the first is prefill's
    pulled = value(m, "prompt_tokens_by_source_total", source="external_kv_transfer")
    cached = value(m, "prompt_tokens_by_source_total", source="local_cache_hit")
    assert pulled + cached == prompt == final.transfer.kv_start_token + pulled
    assert value(m, "kv_transfer_received_bytes_total") == puller.pulled
    assert value(m, "kv_handoff_seconds_count") == 1
    assert value(m, "request_prefill_time_seconds_count") == 0   # not prefilled here
    assert value(m, "request_decode_time_seconds_count") == 1


def test_a_failed_handoff_is_counted_by_reason_and_the_request_as_an_error(engine):
    prompt = len(engine.chat_prompt("hi"))
    error = KvTransferError("KV of r rejected: checksum mismatch (crc32: header says 1, payload 2)")
    puller = FakePuller(FakePrefill(held_reply(engine, prompt)), error=error)
    with worker(engine, "decode", puller) as (stub, m):
        assert generate(stub, engine, prefill_address="prefill:1")[-1].finish_reason == pb.FINISH_REASON_ERROR
    assert value(m, "kv_handoff_failures_total", reason="verify") == 1
    assert value(m, "request_success_total", finished_reason="error") == 1


def test_a_prefill_worker_counts_the_prompt_and_first_token_and_its_handoff_failures(engine):
    params = wire.sampling_to_proto(SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    prompt = engine.chat_prompt("hi")
    with worker(engine, "prefill") as (stub, m):
        reply = stub.Prefill(pb.PrefillRequest(request_id="p1", prompt_token_ids=prompt, sampling=params),
                             timeout=30)
        assert reply.kv.num_tokens == len(prompt)
        assert value(m, "prefill_held_kv_bytes") > 0
        with pytest.raises(grpc.RpcError):
            stub.SendKv(pb.SendKvRequest(request_id="p1", decode_worker_id="nobody"), timeout=10)
    computed = value(m, "prompt_tokens_by_source_total", source="local_compute")
    cached = value(m, "prompt_tokens_by_source_total", source="local_cache_hit")
    assert computed + cached == len(prompt) and cached % engine.config.block_size == 0
    assert value(m, "prefix_cache_queries_total") >= len(prompt)
    assert value(m, "generation_tokens_total") == 1
    assert value(m, "request_success_total", finished_reason="handoff") == 1
    assert value(m, "time_to_first_token_seconds_count") == 1
    assert value(m, "kv_handoff_failures_total", reason="not_paired") == 1
    assert value(m, "prefill_held_kv_bytes") == 0


@pytest.mark.parametrize("message, reason", [
    ("could not pair with prefill worker a:1: timed out", "pairing"),
    ("KV of r did not arrive within 30s", "timeout"),
    ("recv r: the sender refused 'r': gone", "refused"),
    ("recv rejected, header does not match: tokens 3 != 4", "verify"),
    ("something else entirely", "transfer")])
def test_handoff_failure_reasons_are_a_small_fixed_set(message, reason):
    assert handoff_failure_reason(message) == reason


def test_a_worker_serves_its_registry_over_http():
    m = WorkerMetrics("m", "decode", "d-1")
    m.prompt(7, "external_kv_transfer")
    port = serve(m, "127.0.0.1", 0)
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'tandem:prompt_tokens_total{model_name="m",role="decode",worker_id="d-1"} 7.0' in text

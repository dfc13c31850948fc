"""The gateway's /metrics and /status over a scripted backend and a real Redis (no model)."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.config import GatewaySettings
from gateway.ops import OpsState
from gateway.ops.metrics import GatewayMetrics
from gateway.ops.recent import percentiles
from gateway.ops.redis import metered, operation
from services.registry import WorkerInfo
from tandem.redis_server import EmbeddedRedis

from ..fakes import FakeBackend, words
from ..serving import serve

MODEL = "tandem-test"


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted label items): value} of a scrape."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(http: httpx.Client) -> dict[tuple, float]:
    resp = http.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    return samples(resp.text)


def get(values: dict, name: str, **labels) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


class FakeView:
    def __init__(self, workers: list[WorkerInfo] | Exception):
        self._workers = workers

    async def workers(self) -> list[WorkerInfo]:
        if isinstance(self._workers, Exception):
            raise self._workers
        return self._workers


def info(role: str, worker_id: str, **kw) -> WorkerInfo:
    return WorkerInfo(worker_id=worker_id, role=role, address=f"10.0.0.{len(worker_id)}:5000", pid=1,
                      max_num_seqs=8, num_running=1, num_waiting=0, free_blocks=75, total_blocks=100,
                      metrics_address="10.0.0.1:9100", updated_at=time.time() - 1.5, **kw)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


def test_token_counters_equal_the_usage_clients_got_and_requests_are_counted_by_route():
    backend = FakeBackend()
    backend.script = words("a", "b", "c", prompt_tokens=7)
    with serve(create_app(backend, GatewaySettings(served_model_name=MODEL))) as url, \
            httpx.Client(base_url=url, timeout=10) as http:
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        usages = [sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}]).usage
                  for _ in range(3)]
        stream = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                             stream=True, stream_options={"include_usage": True})
        usages.append([c for c in stream if c.usage][-1].usage)
        assert http.post("/v1/chat/completions", json={"model": MODEL}).status_code == 400
        assert http.get("/no/such/path").status_code == 404
        values = scrape(http)
    p = "tandem_gateway_"
    assert get(values, p + "prompt_tokens_total", model_name="fake-model") == sum(u.prompt_tokens for u in usages)
    assert get(values, p + "generation_tokens_total", model_name="fake-model") == \
        sum(u.completion_tokens for u in usages)
    assert get(values, p + "generations_total", model_name="fake-model", finished_reason="stop") == 4
    assert get(values, p + "requests_total", route="/v1/chat/completions", method="POST", status="200") == 4
    assert get(values, p + "requests_total", route="/v1/chat/completions", method="POST", status="400") == 1
    assert get(values, p + "requests_total", route="other", method="GET", status="404") == 1
    assert get(values, p + "time_to_first_token_seconds_count", model_name="fake-model") == 4
    assert get(values, p + "inter_token_latency_seconds_count", model_name="fake-model") == 4 * 2
    assert get(values, p + "inflight_generations", model_name="fake-model") == 0


def test_redis_commands_pipelines_and_failures_are_timed_by_operation(redis_url):
    metrics = GatewayMetrics(MODEL)

    async def run():
        client = metered(redis_url, metrics)
        await client.set("k", "v")
        await client.get("k")
        async with client.pipeline(transaction=True) as pipe:
            await pipe.incr("n").expire("n", 10).execute()
        await client.xread({"nothing": "0-0"}, block=10)
        await client.aclose()
        dead = metered("redis://127.0.0.1:1", metrics, socket_connect_timeout=0.5)
        with pytest.raises(Exception):
            await dead.get("k")
        await dead.aclose()

    asyncio.run(run())
    values = samples(generate(metrics))
    for op in ("set", "get", "pipeline", "xread_blocking"):
        assert get(values, "tandem_gateway_redis_operation_seconds_count", operation=op) >= 1, op
    errors = [k for k in values if k[0] == "tandem_gateway_redis_errors_total" and ("operation", "get") in k[1]]
    assert errors and values[errors[0]] == 1


def generate(metrics: GatewayMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


def test_operation_names_are_bounded_command_names():
    assert operation(("GET", "k")) == "get"
    assert operation(("XREAD", b"BLOCK", 10, b"STREAMS", "s", "0")) == "xread_blocking"
    assert operation(("EVALSHA", "abc", 2)) == "evalsha"


def test_status_page_lists_workers_by_role_recent_latency_and_redis(redis_url):
    import redis.asyncio as aioredis

    workers = [info("prefill", "prefill-a"), info("decode", "decode-b", kv_store="10.0.0.2:6000")]
    metrics = GatewayMetrics(MODEL)
    metrics.recent.add(0.120, [0.02, 0.03], error=False)
    ops = OpsState(metrics, FakeView(workers), aioredis.Redis.from_url(redis_url))
    with serve(create_app(FakeBackend(), GatewaySettings(served_model_name=MODEL), ops=ops)) as url:
        page = httpx.get(f"{url}/status", timeout=10)
        values = samples(httpx.get(f"{url}/metrics", timeout=10).text)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert 'http-equiv="refresh"' in html
    for text in ("prefill-a", "decode-b", "1 prefill, 1 decode", "25.0%", "120.0 ms", "reachable", "AOF"):
        assert text in html, text
    assert get(values, "tandem_gateway_live_workers", role="prefill") == 1
    assert get(values, "tandem_gateway_live_workers", role="decode") == 1


def test_status_page_renders_when_the_registry_and_redis_are_down():
    import redis.asyncio as aioredis

    ops = OpsState(GatewayMetrics(MODEL), FakeView(ConnectionError("registry down")),
                   aioredis.Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.5))
    with serve(create_app(FakeBackend(), GatewaySettings(served_model_name=MODEL), ops=ops)) as url:
        page = httpx.get(f"{url}/status", timeout=10)
        assert httpx.get(f"{url}/metrics", timeout=10).status_code == 200
    assert page.status_code == 200
    assert "registry unreachable" in page.text and "registry down" in page.text
    assert "unreachable: ConnectionError" in page.text


def test_percentiles_are_nearest_rank():
    assert percentiles([]) == {}
    assert percentiles([float(i) for i in range(1, 101)]) == {"p50": 50.0, "p90": 90.0, "p99": 99.0}
    assert percentiles([3.0]) == {"p50": 3.0, "p90": 3.0, "p99": 3.0}


def test_debug_state_is_served_only_with_test_hooks():
    backend = FakeBackend()
    with serve(create_app(backend, GatewaySettings(served_model_name="m"))) as url:
        assert httpx.get(f"{url}/debug/state").status_code == 404
    with serve(create_app(backend, GatewaySettings(served_model_name="m", test_hooks=True))) as url:
        state = httpx.get(f"{url}/debug/state").json()
    assert (state["background_runs"], state["response_tasks"], state["leases"]) == (0, 0, 0)
    assert state["asyncio_tasks"] >= 1 and state["calls_in_flight"] == {} and state["channels"] == []

"""Observability on the live ``tandem up`` stack (the session's, tests/e2e/conftest.py).

- every metric family the issue lists is served by the right process;
- after N chat and Responses requests the gateway's and the workers' token counters agree with
  each other and with the ``usage`` the clients got (services/metrics.py says who counts what);
- every metric the Grafana dashboard queries is served by a running process;
- the workers' gRPC health says SERVING;
- ``/status`` rendered by a real headless Chromium shows both workers.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from html import unescape

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.test_dashboard import DASHBOARD, names_in

pytestmark = pytest.mark.slow
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WORKER_FAMILIES = {
    "prefill": ["num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "prompt_tokens",
                "generation_tokens", "request_success", "time_to_first_token_seconds",
                "e2e_request_latency_seconds", "request_queue_time_seconds", "request_prefill_time_seconds",
                "prompt_tokens_by_source", "kv_transfer_sent_bytes", "kv_handoff_failures",
                "prefill_held_kv_bytes", "kv_pairs_open", "prefix_cache_queries", "prefix_cache_hits"],
    "decode": ["num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "prompt_tokens",
               "generation_tokens", "request_success", "time_to_first_token_seconds",
               "inter_token_latency_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds",
               "request_decode_time_seconds", "prompt_tokens_by_source", "kv_transfer_received_bytes",
               "kv_handoff_seconds", "kv_handoff_failures", "kv_pairs_open"]}
GATEWAY_FAMILIES = ["requests", "request_duration_seconds", "prompt_tokens", "generation_tokens",
                    "time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds",
                    "redis_operation_seconds", "redis_errors", "live_workers", "inflight_generations"]


class Scrape:
    """One scrape: its declared families (name -> type) and samples."""

    def __init__(self, text: str):
        families = list(text_string_to_metric_families(text))
        self.types = {f.name: f.type for f in families}
        self.samples = [s for f in families for s in f.samples]

    def total(self, name: str, **labels) -> float:
        return sum(s.value for s in self.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    def names(self) -> set[str]:
        return {n + s for n, t in self.types.items() for s in SUFFIXES.get(t, ("",))}


def scrape(url: str) -> Scrape:
    with urllib.request.urlopen(url, timeout=10) as r:
        return Scrape(r.read().decode())


def gateway_url(stack) -> str:
    return stack.base_url.removesuffix("/v1")


def scrape_all(stack) -> tuple[Scrape, dict[str, list[Scrape]]]:
    workers = stack.registry().live()
    assert {w.role for w in workers} >= {"prefill", "decode"} and all(w.metrics_address for w in workers)
    by_role: dict[str, list[Scrape]] = {}
    for w in workers:
        by_role.setdefault(w.role, []).append(scrape(f"http://{w.metrics_address}/metrics"))
    return scrape(f"{gateway_url(stack)}/metrics"), by_role


def wait_quiet(stack, timeout: float = 120.0) -> None:
    """Until no request runs anywhere (earlier tests may leave background work behind)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gateway, workers = scrape_all(stack)
        busy = gateway.total("tandem_gateway_inflight_generations") + sum(
            s.total("tandem:num_requests_running") + s.total("tandem:num_requests_waiting")
            + s.total("tandem:prefill_held_kv_bytes") for ss in workers.values() for s in ss)
        if busy == 0:
            return
        time.sleep(0.5)
    raise AssertionError("the stack did not go quiet")


def run_requests(stack) -> list[tuple[int, int]]:
    """Three chat (one streamed) and two Responses (one streamed) requests; their (prompt, completion)."""
    client, usage = stack.client(), []
    for i, question in enumerate(["What is the capital of France?", "Name a colour.", "Count to five."]):
        messages = [{"role": "user", "content": question}]
        if i == 2:
            chunks = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=messages, max_tokens=16,
                                                    temperature=0, stream=True, stream_options={"include_usage": True})
            u = [c for c in chunks if c.usage][-1].usage
        else:
            u = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=messages, max_tokens=16,
                                               temperature=0).usage
        usage.append((u.prompt_tokens, u.completion_tokens))
    r = client.responses.create(model="SmolLM2-135M-Instruct", input="Say hello.", max_output_tokens=16,
                                temperature=0)
    usage.append((r.usage.input_tokens, r.usage.output_tokens))
    stream = client.responses.create(model="SmolLM2-135M-Instruct", input="Name a fruit.", max_output_tokens=16,
                                     temperature=0, stream=True)
    done = [e for e in stream if e.type == "response.completed"][-1].response
    usage.append((done.usage.input_tokens, done.usage.output_tokens))
    return usage


def delta(after: Scrape, before: Scrape, name: str, **labels) -> float:
    return after.total(name, **labels) - before.total(name, **labels)


def role_delta(after: dict, before: dict, role: str, name: str, **labels) -> float:
    return sum(a.total(name, **labels) for a in after[role]) - sum(b.total(name, **labels) for b in before[role])


def test_every_family_is_served_by_its_process_and_token_counts_agree_with_usage(stack):
    wait_quiet(stack)
    gw0, w0 = scrape_all(stack)
    usage = run_requests(stack)
    wait_quiet(stack)
    gw1, w1 = scrape_all(stack)
    for role, families in WORKER_FAMILIES.items():
        for family in families:
            assert all(f"tandem:{family}" in s.types for s in w1[role]), (role, family)
    for family in GATEWAY_FAMILIES:
        assert f"tandem_gateway_{family}" in gw1.types, family
    prompt, completion = sum(p for p, _ in usage), sum(c for _, c in usage)
    past_first = sum(p for p, c in usage if c > 1)   # a decode worker imports KV only for these
    assert delta(gw1, gw0, "tandem_gateway_prompt_tokens_total") == prompt
    assert delta(gw1, gw0, "tandem_gateway_generation_tokens_total") == completion
    assert role_delta(w1, w0, "prefill", "tandem:prompt_tokens_total") == prompt
    assert sum(role_delta(w1, w0, "prefill", "tandem:prompt_tokens_by_source_total", source=source)
               for source in ("local_compute", "local_cache_hit")) == prompt
    assert sum(role_delta(w1, w0, "decode", "tandem:prompt_tokens_by_source_total", source=source)
               for source in ("external_kv_transfer", "local_cache_hit")) == past_first
    generated = sum(role_delta(w1, w0, role, "tandem:generation_tokens_total") for role in w1)
    assert generated == completion
    assert role_delta(w1, w0, "prefill", "tandem:generation_tokens_total") == len(usage)
    ended = sum(role_delta(w1, w0, r, "tandem:request_success_total", finished_reason=f)
                for r in w1 for f in ("stop", "length"))
    assert ended == len(usage)
    handoffs = role_delta(w1, w0, "decode", "tandem:kv_handoff_seconds_count")
    assert handoffs == sum(c > 1 for _, c in usage)
    assert role_delta(w1, w0, "prefill", "tandem:kv_transfer_sent_bytes_total") == \
        role_delta(w1, w0, "decode", "tandem:kv_transfer_received_bytes_total") > 0
    assert delta(gw1, gw0, "tandem_gateway_requests_total", route="/v1/chat/completions", status="200") == 3
    assert delta(gw1, gw0, "tandem_gateway_requests_total", route="/v1/responses", status="200") == 2
    assert gw1.total("tandem_gateway_live_workers", role="prefill") >= 1
    assert gw1.total("tandem_gateway_live_workers", role="decode") >= 1


def test_every_metric_the_dashboard_queries_is_served(stack):
    gateway, workers = scrape_all(stack)
    served = gateway.names().union(*(s.names() for ss in workers.values() for s in ss))
    missing = names_in(json.loads(DASHBOARD.read_text())) - served
    assert not missing, f"the dashboard queries metrics no process serves: {sorted(missing)}"


def test_workers_report_serving_on_the_standard_grpc_health_service(stack):
    for w in stack.registry().live():
        service = "tandem.v1.PrefillService" if w.role == "prefill" else "tandem.v1.DecodeService"
        with grpc.insecure_channel(w.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for name in ("", service):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, (w.worker_id, name)


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install.sh installs it)")
def test_status_page_in_headless_chromium_shows_both_workers(stack, tmp_path):
    url = f"{gateway_url(stack)}/status"
    shot = tmp_path / "status.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,900", url)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    dom = chromium(tmp_path, "--dump-dom", url).stdout
    text = unescape(re.sub(r"<[^>]+>", " ", dom))
    assert "Tandem" in text and "Workers" in text and "Redis" in text and "reachable" in text
    for w in stack.registry().live():
        assert w.worker_id in text and w.address in text, w.worker_id
    roles = re.findall(r"\b(prefill|decode)\b", text)
    assert "prefill" in roles and "decode" in roles

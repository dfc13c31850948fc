"""``tandem bench`` against a real server: the gateway over the in-process SmolLM2 engine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tandem.cli import main
from tests.gateway.serving import serve

pytestmark = pytest.mark.slow

OUTPUT_LEN = 12


@pytest.fixture(scope="module")
def server():
    from gateway.app import create_app
    from tests.gateway.local_backend import LocalBackend
    from gateway.config import GatewaySettings
    from services.engine import EngineConfig, LLMEngine
    from tandem.settings import Settings

    engine = LLMEngine(EngineConfig(kv_cache_bytes=256 << 20), Settings.from_env().cache_dir)
    settings = GatewaySettings(served_model_name=engine.model_name, request_timeout_s=120)
    with serve(create_app(LocalBackend(engine), settings)) as url:
        yield f"{url}/v1", engine.model_name


def bench(server, tmp_path, *argv):
    url, model = server
    out = tmp_path / "r.json"
    rc = main(["bench", "--base-url", url, "--model", model, "--result-json", str(out), "--no-progress",
               *argv])
    return rc, json.loads(out.read_text())


def test_random_fixed_lengths_report_is_complete_and_consistent(server, tmp_path, capsys):
    rc, d = bench(server, tmp_path, "--dataset", "random", "--input-len", "48", "--output-len",
                  str(OUTPUT_LEN), "--num-requests", "6", "--concurrency", "3", "--warmup", "1",
                  "--slo", "ttft=60,tpot=10")
    assert rc == 0 and "Serving Benchmark Result" in capsys.readouterr().out
    m, reqs, cal = d["metrics"], d["requests"], d["calibration"]
    assert (m["completed"], m["failed"], len(reqs)) == (6, 0, 6)
    assert [r["index"] for r in reqs] == list(range(6))
    assert cal["measured"] and 0.9 < cal["tokens_per_word"] < 1.3 and cal["overhead"] > 0

    for r in reqs:
        assert r["success"] and r["status"] == 200 and r["finish_reason"] == "length"
        assert r["completion_tokens"] == r["max_tokens"] == OUTPUT_LEN       # ignore_eos
        assert len(r["itl"]) == r["completion_tokens"] - 1 == len(r["decode_time_arr"])
        # the template's overhead plus the prompt text, within a few tokens of the estimate
        assert abs(r["prompt_tokens"] - (cal["overhead"] + 48)) <= 6
        times = [r["sent"], *r["chunk_times"], r["done"]]
        assert r["scheduled"] <= r["sent"] and times == sorted(times)
        assert r["ttft"] == pytest.approx(r["chunk_times"][0] - r["sent"])
        assert r["tpot"] == pytest.approx((r["e2e"] - r["ttft"]) / (OUTPUT_LEN - 1))
        # the server's view (gateway arrival → each token) fits inside the client's (sent → each
        # chunk received); how far inside is delivery jitter, large here where client, gateway and
        # engine share one process and its GIL
        assert 0 < r["prefill_time"] <= r["ttft"]
        assert r["prefill_time"] + sum(r["decode_time_arr"]) <= r["chunk_times"][-1] - r["sent"]
        assert r["meets_slo"]

    duration = m["duration"]
    assert duration >= max(r["done"] for r in reqs)
    assert m["total_output_tokens"] == sum(r["completion_tokens"] for r in reqs) == 6 * OUTPUT_LEN
    assert m["total_input_tokens"] == sum(r["prompt_tokens"] for r in reqs)
    assert m["request_throughput"] == pytest.approx(6 / duration)
    assert m["output_throughput"] == pytest.approx(m["total_output_tokens"] / duration)
    assert m["total_token_throughput"] == pytest.approx(
        (m["total_input_tokens"] + m["total_output_tokens"]) / duration)
    assert m["goodput"] == pytest.approx(m["request_throughput"])
    assert m["ttft_ms"]["mean"] == pytest.approx(1000 * np.mean([r["ttft"] for r in reqs]))
    assert m["itl_ms"]["count"] == 6 * (OUTPUT_LEN - 1)
    assert m["itl_ms"]["p99"] == pytest.approx(1000 * np.percentile(sum((r["itl"] for r in reqs), []), 99))
    assert m["server_decode_ms"]["count"] == 6 * (OUTPUT_LEN - 1)
    assert all((tmp_path / "r" / name).stat().st_size > 0
               for name in ("latency_cdf.png", "itl_over_time.png"))


def test_chat_prompts_at_a_poisson_rate(server, tmp_path):
    rc, d = bench(server, tmp_path, "--dataset", "chat", "--output-len", "8", "--num-requests", "4",
                  "--request-rate", "4", "--no-plots")
    reqs = d["requests"]
    assert rc == 0 and d["metrics"]["completed"] == 4 and not d["config"]["ignore_eos"]
    assert [r["scheduled"] for r in reqs] == sorted(r["scheduled"] for r in reqs)
    assert reqs[0]["scheduled"] == 0 and reqs[-1]["scheduled"] > 0
    assert all(1 <= r["completion_tokens"] <= 8 and r["prompt_tokens"] > 0 for r in reqs)


def test_rejected_requests_are_counted_not_fatal(server, tmp_path, capsys):
    url, _ = server
    rc, d = bench((url, "no-such-model"), tmp_path, "--num-requests", "2", "--no-plots")
    assert rc == 1 and d["metrics"]["failed"] == 2 and d["metrics"]["completed"] == 0
    assert all(r["status"] == 404 and "no-such-model" in r["error"] for r in d["requests"])
    assert "Failed requests:                         2" in capsys.readouterr().out

"""``tandem bench`` against the real disaggregated ``tandem up`` stack."""

from __future__ import annotations

import json

import pytest

from tandem.cli import main

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"


def test_short_bench_report_is_complete_and_matches_server_usage(stack, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--base-url", stack.base_url, "--model", MODEL, "--dataset", "random",
               "--input-len", "64", "--output-len", "10", "--num-requests", "6", "--concurrency", "3",
               "--warmup", "1", "--slo", "ttft=60,tpot=10", "--result-json", str(out), "--no-progress"])
    assert rc == 0 and "Serving Benchmark Result" in capsys.readouterr().out
    report = json.loads(out.read_text())
    m, reqs = report["metrics"], report["requests"]
    assert (m["completed"], m["failed"], len(reqs)) == (6, 0, 6)
    for r in reqs:
        assert r["success"] and r["finish_reason"] == "length"
        # the server's usage: the first token from the prefill worker counts; one decode entry per later token
        assert r["completion_tokens"] == 10
        assert len(r["decode_time_arr"]) == r["completion_tokens"] - 1
        assert 0 < r["prefill_time"] <= r["ttft"] and r["prompt_tokens"] > 64
    assert m["total_output_tokens"] == sum(r["completion_tokens"] for r in reqs) == 60
    assert m["total_input_tokens"] == sum(r["prompt_tokens"] for r in reqs)
    assert m["goodput"] == pytest.approx(m["request_throughput"])
    assert (tmp_path / "bench" / "latency_cdf.png").stat().st_size > 0


def test_prefill_ttft_benchmark_reads_the_gateways_first_token_time(stack):
    """benchmarks/prefill_ttft.py's request: a long new prompt, ``prefill_time`` within the wall time."""
    import httpx
    import numpy as np

    from benchmarks.prefill_ttft import ask
    from tandem.bench.workload import random_words

    with httpx.Client(base_url=stack.base_url, timeout=120) as client:
        res = ask(client, random_words(600, np.random.default_rng(7)))
    assert 550 < res["prompt_tokens"] < 800
    assert 0 < res["prefill_s"] <= res["wall_s"]

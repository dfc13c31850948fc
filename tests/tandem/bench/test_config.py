"""Config validation and SLO parsing (no server)."""

from __future__ import annotations

import math

import pytest

from tandem.bench.config import SLO, BenchConfig, LoadConfig, WorkloadConfig


def test_slo_parse():
    assert SLO.parse("ttft=0.5,tpot=0.05,e2e=10") == SLO(0.5, 0.05, 10.0)
    assert SLO.parse("tpot=0.1") == SLO(tpot=0.1) and SLO.parse("tpot=0.1").given
    assert SLO.parse("") == SLO() and not SLO().given
    for bad in ("itl=1", "ttft", "ttft=-1", "ttft=x"):
        with pytest.raises(ValueError):
            SLO.parse(bad)


@pytest.mark.parametrize("kwargs", [
    dict(request_rate=0), dict(burstiness=0), dict(concurrency=0), dict(num_requests=0),
    dict(num_requests=None), dict(num_requests=None, duration=5),      # all at once, forever
    dict(duration=-1), dict(warmup=-1),
])
def test_bad_loads_are_refused(kwargs):
    with pytest.raises(ValueError):
        LoadConfig(**kwargs)


def test_good_loads():
    assert LoadConfig(concurrency=4).closed_loop
    assert not LoadConfig(request_rate=2, concurrency=4).closed_loop
    assert LoadConfig(num_requests=None, duration=5, concurrency=2).duration == 5
    assert LoadConfig(num_requests=None, duration=5, request_rate=3).num_requests is None


@pytest.mark.parametrize("kwargs", [
    dict(dataset="sharegpt"), dict(input_len=0), dict(output_len=0), dict(range_ratio=1.0),
    dict(dataset="random", dataset_path="x.jsonl"),
])
def test_bad_workloads_are_refused(kwargs):
    with pytest.raises(ValueError):
        WorkloadConfig(**kwargs)


def test_bench_config():
    c = BenchConfig("http://h:8000/v1/", "m", api_key="secret")
    assert c.url == "http://h:8000/v1/chat/completions"
    d = c.to_dict()
    assert "api_key" not in d and "secret" not in repr(c)
    assert d["load"]["request_rate"] == "inf" and d["result_json"].endswith(".json")
    for bad in (dict(base_url="h:8000"), dict(extra_body={"stream": False}), dict(seed=-1),
                dict(timeout_s=0)):
        with pytest.raises(ValueError):
            BenchConfig(**{"base_url": "http://h/v1", "model": "m", **bad})
    assert math.isinf(c.load.request_rate)

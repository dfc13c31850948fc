"""The table, the JSON and the plots of a hand-made result (no server)."""

from __future__ import annotations

import json

import pytest

from tandem.bench.config import SLO, BenchConfig
from tandem.bench.metrics import summarize
from tandem.bench.plots import write_plots
from tandem.bench.report import table, to_json, write_json
from tandem.bench.result import BenchResult
from tandem.bench.workload import Calibration

from .records import failed, record

RECORDS = (record(0.0, (0.2, 0.3, 0.5), 0.6, completion_tokens=3, prompt_tokens=40, index=0,
                  prefill_time=0.15, decode_time_arr=(0.1, 0.2)),
           failed(index=1, sent=0.1),
           record(0.2, (0.9,), 1.0, completion_tokens=1, prompt_tokens=60, index=2))


def result(slo=SLO(ttft=0.5)):
    config = BenchConfig("http://h/v1", "m", slo=slo, api_key="secret")
    return BenchResult(config, Calibration(1.02, 31.0, True), summarize(RECORDS, 2.0, slo), RECORDS,
                       "2025-01-01T00:00:00+00:00")


def test_table_has_the_vllm_layout_and_the_failures():
    text = table(result())
    for line in ("Serving Benchmark Result", "Successful requests:                     2",
                 "Failed requests:                         1", "Request goodput (req/s):",
                 "Mean TTFT (ms):                          450.00", "P99 ITL (ms):",
                 "Server prefill_time", "1 x HTTP 503: busy"):
        assert line in text, line
    assert "goodput" not in table(result(SLO()))


def test_json_is_complete_and_consistent(tmp_path):
    path = write_json(result(), tmp_path / "out" / "r.json")
    d = json.loads(path.read_text())
    assert "secret" not in path.read_text()
    assert d["config"]["slo"] == {"ttft": 0.5, "tpot": None, "e2e": None}
    assert d["calibration"] == {"tokens_per_word": 1.02, "overhead": 31.0, "measured": True}
    assert d["errors"] == {"HTTP 503: busy": 1}
    m = d["metrics"]
    assert (m["completed"], m["failed"], m["total_output_tokens"]) == (2, 1, 4)
    assert m["output_throughput"] == pytest.approx(4 / 2.0) and m["goodput"] == pytest.approx(1 / 2.0)
    first, bad, last = d["requests"]
    assert first["ttft"] == pytest.approx(0.2) and first["itl"] == pytest.approx([0.1, 0.2])
    assert first["tpot"] == pytest.approx(0.2) and first["e2e"] == pytest.approx(0.6)
    assert first["meets_slo"] and not last["meets_slo"] and last["tpot"] is None
    assert first["decode_time_arr"] == [0.1, 0.2] and first["output_tokens"] == 3
    assert not bad["success"] and "ttft" not in bad and bad["status"] == 503
    assert m["ttft_ms"]["mean"] == pytest.approx(1000 * (0.2 + 0.7) / 2)
    assert to_json(result())["requests"][0]["index"] == 0


def test_plots_are_written(tmp_path):
    paths = write_plots({"a": RECORDS, "b": RECORDS[:1]}, tmp_path / "plots")
    assert [p.name for p in paths] == ["latency_cdf.png", "itl_over_time.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)

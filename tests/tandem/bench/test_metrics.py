"""Metric definitions on hand-made timing traces (no server)."""

from __future__ import annotations

import pytest

from tandem.bench import metrics as m
from tandem.bench.config import SLO
from tandem.bench.metrics import LatencyStats, summarize

from .records import failed, record

# sent at 1.0; content chunks at 1.5, 1.6, 1.8, 2.1; stream ends at 2.2; 4 tokens.
A = record(1.0, (1.5, 1.6, 1.8, 2.1), 2.2, completion_tokens=4, prompt_tokens=100, index=0)
# sent at 2.0; chunks at 2.2 and 2.6; ends 2.7; 3 tokens in 2 chunks (one chunk carried two).
B = record(2.0, (2.2, 2.6), 2.7, completion_tokens=3, prompt_tokens=50, index=1)
# one token only: no TPOT, no ITL.
C = record(3.0, (3.9,), 4.0, completion_tokens=1, prompt_tokens=20, index=2)


def test_per_request_definitions():
    assert m.ttft(A) == pytest.approx(0.5)
    assert m.e2e(A) == pytest.approx(1.2)
    assert m.itl(A) == pytest.approx([0.1, 0.2, 0.3])
    assert m.tpot(A) == pytest.approx((1.2 - 0.5) / 3)
    # TPOT divides by tokens, ITL counts chunks
    assert m.tpot(B) == pytest.approx((0.7 - 0.2) / 2)
    assert m.itl(B) == pytest.approx([0.4])
    assert m.tpot(C) is None and m.itl(C) == []


def test_output_tokens_prefer_usage_and_fall_back_to_chunks():
    assert m.output_tokens(B) == 3
    no_usage = record(0.0, (0.1, 0.2, 0.3), 0.4, completion_tokens=None, prompt_tokens=None, prompt_len=64)
    assert m.output_tokens(no_usage) == 3
    assert m.tpot(no_usage) == pytest.approx(0.3 / 2)
    assert m.input_tokens(no_usage) == 64 and m.input_tokens(A) == 100


def test_percentiles_use_numpys_linear_method():
    s = LatencyStats.of([4.0, 1.0, 3.0, 2.0])
    assert (s.count, s.mean, s.median, s.max) == (4, 2.5, 2.5, 4.0)
    assert s.p90 == pytest.approx(3.7) and s.p99 == pytest.approx(3.97)
    assert s.std == pytest.approx(1.118033988749895)
    assert LatencyStats.of([]) is None
    assert s.to_ms()["p90"] == pytest.approx(3700) and s.to_ms()["count"] == 4


def test_itl_is_pooled_over_requests_and_ttft_is_per_request():
    s = summarize([A, B, C], duration=5.0)
    assert s.itl.count == 4                            # 3 gaps of A + 1 of B, none of C
    assert s.itl.mean == pytest.approx((0.1 + 0.2 + 0.3 + 0.4) / 4)
    assert s.itl.median == pytest.approx(0.25)
    assert s.ttft.count == 3 and s.ttft.mean == pytest.approx((0.5 + 0.2 + 0.9) / 3)
    assert s.tpot.count == 2                           # C has no TPOT
    assert s.e2e.max == pytest.approx(1.2)


def test_throughput_counts_only_successes():
    s = summarize([A, B, failed(3), C], duration=4.0)
    assert (s.completed, s.failed) == (3, 1)
    assert (s.total_input_tokens, s.total_output_tokens) == (170, 8)
    assert s.request_throughput == pytest.approx(3 / 4)
    assert s.output_throughput == pytest.approx(8 / 4)
    assert s.total_token_throughput == pytest.approx(178 / 4)
    assert s.goodput is None                           # no SLO given


@pytest.mark.parametrize("slo, good", [
    (SLO(ttft=0.5), 2),                 # A (0.5, at the limit) and B (0.2); C's 0.9 misses
    (SLO(ttft=0.3), 1),                 # B only
    (SLO(tpot=0.2), 1),                 # A (0.233) and B (0.25) miss; C has no TPOT: meets
    (SLO(tpot=0.24), 2),                # A meets too
    (SLO(tpot=0.26), 3),
    (SLO(e2e=1.0), 2),                  # A's 1.2 misses
    (SLO(ttft=0.5, tpot=0.24), 1),      # B misses TPOT, C misses TTFT: only A
    (SLO(ttft=0.5, tpot=0.24, e2e=1.0), 0),
    (SLO(ttft=1.0, tpot=1.0, e2e=1.0), 2),
    (SLO(ttft=0.1), 0),
])
def test_goodput_needs_every_given_slo(slo, good):
    s = summarize([A, B, C, failed(3)], duration=2.0, slo=slo)
    assert s.goodput == pytest.approx(good / 2.0)


def test_all_failed_has_no_latencies():
    s = summarize([failed(0), failed(1)], duration=1.0, slo=SLO(ttft=1))
    assert (s.completed, s.failed, s.goodput, s.request_throughput) == (2 - 2, 2, 0.0, 0.0)
    assert s.ttft is None and s.itl is None
    assert s.to_dict()["ttft_ms"] is None and s.to_dict()["completed"] == 0


def test_server_side_usage_is_summarized_next_to_the_client_view():
    a = record(0.0, (0.3, 0.4, 0.6), 0.6, completion_tokens=3, prefill_time=0.25, decode_time_arr=(0.1, 0.2))
    b = record(0.0, (0.5,), 0.5, completion_tokens=1, prefill_time=0.45, decode_time_arr=())
    s = summarize([a, b], duration=1.0)
    assert s.server_prefill.mean == pytest.approx(0.35)
    assert s.server_decode.count == 2 and s.server_decode.max == pytest.approx(0.2)
    assert summarize([A], duration=1.0).server_prefill is None


def test_to_dict_reports_latencies_in_ms():
    d = summarize([A, B, C], duration=5.0).to_dict()
    assert d["ttft_ms"]["mean"] == pytest.approx(1000 * (0.5 + 0.2 + 0.9) / 3)
    assert {"itl_ms", "tpot_ms", "e2e_ms", "server_prefill_ms", "server_decode_ms"} <= d.keys()
    assert d["duration"] == 5.0

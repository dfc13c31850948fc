"""The results of a run: the summary table (vLLM's "Serving Benchmark Result" layout) and the JSON.

The JSON holds ``config``, ``calibration``, ``metrics`` (latencies in ms), ``errors`` (message →
count) and ``requests``: every measured request's raw record (times in seconds since the run's
start) plus its derived ``ttft``, ``tpot``, ``e2e`` and ``itl`` (seconds), token counts and
whether it met the SLOs.
"""

from __future__ import annotations

import collections
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import metrics as m
from .metrics import LatencyStats
from .record import RequestRecord
from .result import BenchResult

WIDTH = 50
SECTIONS = (
    ("ttft", "TTFT", "Time to First Token"),
    ("tpot", "TPOT", "Time per Output Token (excl. 1st token)"),
    ("itl", "ITL", "Inter-token Latency"),
    ("e2e", "E2E", "End-to-end Latency"),
    ("server_prefill", "prefill", "Server prefill_time (usage)"),
    ("server_decode", "decode gap", "Server decode_time_arr (usage)"),
)


def table(result: BenchResult) -> str:
    """The human-readable summary of ``result``."""
    c, s = result.config, result.metrics
    lines = [f"{' Serving Benchmark Result ':=^{WIDTH}}"]
    rows: list[tuple[str, Any]] = [
        ("Model:", c.model),
        ("Dataset:", _dataset(result)),
        ("Request rate (req/s):", _rate(c.load.request_rate)),
        ("Burstiness:", f"{c.load.burstiness:g}"),
        ("Max concurrency:", c.load.concurrency or "unlimited"),
        ("Successful requests:", s.completed),
        ("Failed requests:", s.failed),
        ("Benchmark duration (s):", s.duration),
        ("Total input tokens:", s.total_input_tokens),
        ("Total generated tokens:", s.total_output_tokens),
        ("Request throughput (req/s):", s.request_throughput),
        ("Output token throughput (tok/s):", s.output_throughput),
        ("Total token throughput (tok/s):", s.total_token_throughput),
    ]
    if s.goodput is not None:
        rows += [("Goodput SLOs (s):", _slo(result)), ("Request goodput (req/s):", s.goodput)]
    lines += [_row(k, v) for k, v in rows]
    for key, short, title in SECTIONS:
        stats: LatencyStats | None = getattr(s, key)
        if stats is not None:
            lines.append(f"{' ' + title + ' ':-^{WIDTH}}")
            lines += [_row(f"{label} {short} (ms):", getattr(stats, attr) * 1000)
                      for label, attr in (("Mean", "mean"), ("Median", "median"), ("P90", "p90"),
                                          ("P99", "p99"), ("Max", "max"))]
    lines.append("=" * WIDTH)
    for error, count in errors(result.records).most_common(5):
        lines.append(f"{count} x {error}")
    return "\n".join(lines)


def errors(records: tuple[RequestRecord, ...] | list[RequestRecord]) -> collections.Counter[str]:
    return collections.Counter(r.error or "" for r in records if not r.success)


def to_json(result: BenchResult) -> dict[str, Any]:
    return {
        "tool": "tandem bench",
        "started_at": result.started_at,
        "config": result.config.to_dict(),
        "calibration": asdict(result.calibration),
        "warmup_failed": result.warmup_failed,
        "metrics": result.metrics.to_dict(),
        "errors": dict(errors(result.records)),
        "requests": [_request(r, result) for r in result.records],
    }


def write_json(result: BenchResult, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(result), indent=1, allow_nan=False) + "\n")
    return path


def _request(r: RequestRecord, result: BenchResult) -> dict[str, Any]:
    d = r.to_dict()
    if r.success:
        d.update(ttft=m.ttft(r), tpot=m.tpot(r), e2e=m.e2e(r), itl=m.itl(r),
                 input_tokens=m.input_tokens(r), output_tokens=m.output_tokens(r),
                 meets_slo=m.meets(r, result.config.slo))
    return d


def _row(label: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{label:<40} {value:<10.2f}"
    return f"{label:<40} {value!s:<10}"


def _rate(rate: float) -> str:
    return "inf" if math.isinf(rate) else f"{rate:g}"


def _dataset(result: BenchResult) -> str:
    w = result.config.workload
    if w.dataset == "chat":
        return f"chat ({w.dataset_path or 'shipped prompts'}, max_tokens {w.output_len})"
    return f"random (in {w.input_len}, out {w.output_len}, range {w.range_ratio:g})"


def _slo(result: BenchResult) -> str:
    return ",".join(f"{k}={v:g}" for k, v in asdict(result.config.slo).items() if v is not None)

"""``BenchResult``: everything one run produced, as the report and the plots consume it."""

from __future__ import annotations

from dataclasses import dataclass

from .config import BenchConfig
from .metrics import BenchMetrics
from .record import RequestRecord
from .workload import Calibration


@dataclass(frozen=True)
class BenchResult:
    """``records`` are the measured requests in send order (warm-up excluded).

    ``started_at`` is the wall-clock start (ISO 8601, UTC); ``warmup_failed`` counts warm-up failures.
    """

    config: BenchConfig
    calibration: Calibration
    metrics: BenchMetrics
    records: tuple[RequestRecord, ...]
    started_at: str
    warmup_failed: int = 0

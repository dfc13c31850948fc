"""The last minute of this gateway's generations, for the status page (Prometheus keeps history).

Bounded: at most ``max_samples`` generations and token gaps are kept, and anything older than
``window_s`` is dropped when read or written. Each gateway replica sees only its own requests.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class RecentStats:
    window_s: float
    requests: int
    errors: int
    ttft: dict[str, float]   # "p50"/"p90"/"p99" seconds; empty without samples
    itl: dict[str, float]

    @property
    def rate(self) -> float:
        return self.requests / self.window_s


class RecentWindow:
    def __init__(self, window_s: float = 60.0, max_samples: int = 20_000):
        self.window_s = window_s
        self._ends: deque[tuple[float, float | None, bool]] = deque(maxlen=max_samples)
        self._gaps: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def add(self, ttft: float | None, gaps: list[float], error: bool) -> None:
        now = time.monotonic()
        self._ends.append((now, ttft, error))
        self._gaps.extend((now, g) for g in gaps)

    def stats(self) -> RecentStats:
        cutoff = time.monotonic() - self.window_s
        for q in (self._ends, self._gaps):
            while q and q[0][0] < cutoff:
                q.popleft()
        ends = list(self._ends)
        return RecentStats(self.window_s, len(ends), sum(e for _, _, e in ends),
                           percentiles([t for _, t, _ in ends if t is not None]),
                           percentiles([g for _, g in self._gaps]))


def percentiles(values: list[float]) -> dict[str, float]:
    """Nearest-rank p50/p90/p99 of ``values`` (empty dict for no values)."""
    if not values:
        return {}
    ordered = sorted(values)
    return {f"p{round(q * 100)}": ordered[max(0, math.ceil(q * len(ordered)) - 1)] for q in (0.5, 0.9, 0.99)}

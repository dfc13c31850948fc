"""benchmarks/warm_start.py reads the lines ``tandem up`` and its workers really print."""

from __future__ import annotations

import time

from benchmarks.warm_start import READY, WORKER
from services.worker import startup_line
from tandem.up import _timing_line


def test_the_timing_lines_parse():
    line = _timing_line(time.monotonic() - 3.5, {"redis": 0.01, "model files": 0.02})
    m = READY.search(line)
    assert m and abs(float(m.group(1)) - 3.5) < 0.2 and m.group(2).startswith("redis 0.0 s")
    worker = f"INFO [decode] services.decode.main: decode worker decode-x1 {startup_line(0.7)}"
    m = WORKER.search(worker)
    assert m and m.group(1) == "decode" and float(m.group(3)) == 0.7

"""Arrival schedules and the dispatcher (no server)."""

from __future__ import annotations

import asyncio
import itertools
import math
import time

import numpy as np
import pytest

from tandem.bench.load import arrival_offsets, dispatch


def gaps(rate: float, burstiness: float, n: int = 20_000, seed: int = 7) -> np.ndarray:
    offsets = np.fromiter(itertools.islice(arrival_offsets(rate, burstiness, np.random.default_rng(seed)), n),
                          float)
    assert offsets[0] == 0.0 and np.all(np.diff(offsets) >= 0)
    return np.diff(offsets)


@pytest.mark.parametrize("rate", [0.5, 4.0, 50.0])
def test_poisson_arrivals_have_the_mean_rate(rate):
    g = gaps(rate, 1.0)
    assert 1 / g.mean() == pytest.approx(rate, rel=0.03)
    assert g.std() / g.mean() == pytest.approx(1.0, rel=0.05)      # exponential: CV = 1


@pytest.mark.parametrize("burstiness", [0.25, 0.5, 2.0, 8.0])
def test_burstiness_keeps_the_mean_and_sets_the_variance(burstiness):
    g = gaps(10.0, burstiness)
    assert g.mean() == pytest.approx(0.1, rel=0.05)
    assert (g.std() / g.mean()) ** 2 == pytest.approx(1 / burstiness, rel=0.1)   # gamma: CV^2 = 1/k


def test_burstier_is_more_variable():
    assert gaps(10.0, 0.5).var() > gaps(10.0, 1.0).var() > gaps(10.0, 4.0).var()


def test_same_seed_same_schedule_and_infinite_rate_is_all_at_once():
    a, b = (list(itertools.islice(arrival_offsets(3.0, 1.0, np.random.default_rng(1)), 50)) for _ in range(2))
    assert a == b
    assert list(itertools.islice(arrival_offsets(math.inf, 1.0, np.random.default_rng(1)), 5)) == [0.0] * 5


class Tracker:
    """A fake request: sleeps, and records how many were in flight and when it started."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.in_flight = self.peak = 0
        self.started: list[float] = []

    async def send(self, item, scheduled_at):
        self.started.append(time.perf_counter())
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.seconds(item))
        finally:
            self.in_flight -= 1
        return item, scheduled_at


@pytest.mark.parametrize("concurrency", [1, 3, 8])
def test_closed_loop_never_exceeds_the_concurrency(concurrency):
    rng = np.random.default_rng(0)
    delays = rng.uniform(0.001, 0.01, size=40)
    t = Tracker(lambda i: delays[i])
    start = time.perf_counter()
    out = asyncio.run(dispatch(range(40), itertools.repeat(0.0), t.send, start=start, concurrency=concurrency))
    assert [item for item, _ in out] == list(range(40))      # results in send order
    assert t.peak == concurrency


def test_closed_loop_sends_the_next_request_when_one_finishes():
    t = Tracker(lambda i: 0.05)
    start = time.perf_counter()
    asyncio.run(dispatch(range(6), itertools.repeat(0.0), t.send, start=start, concurrency=2))
    started = np.array(t.started) - start
    assert np.all(started[:2] < 0.04)                        # both users start at once
    assert np.all(started[2:] >= started[:-2] + 0.049)       # each waits for a request to finish


def test_open_loop_keeps_to_the_schedule_and_the_cap_only_delays():
    offsets = [0.0, 0.03, 0.06, 0.09]
    t = Tracker(lambda i: 0.001)
    start = time.perf_counter()
    out = asyncio.run(dispatch(range(4), offsets, t.send, start=start))
    assert [s - start for _, s in out] == pytest.approx(offsets)
    late = np.array(t.started) - start - offsets
    assert np.all(late >= -1e-3) and np.all(late < 0.1)      # never early; late only by the loop
    # a cap of 1 with slow requests: each waits for the previous one, none goes early
    t = Tracker(lambda i: 0.05)
    start = time.perf_counter()
    asyncio.run(dispatch(range(4), offsets, t.send, start=start, concurrency=1))
    started = np.array(t.started) - start
    assert t.peak == 1 and np.all(started >= np.array(offsets) - 1e-3)
    assert np.all(np.diff(started) >= 0.049)


def test_duration_stops_dispatching_and_awaits_what_was_sent():
    t = Tracker(lambda i: 0.02)
    start = time.perf_counter()
    out = asyncio.run(dispatch(itertools.count(), itertools.repeat(0.0), t.send, start=start,
                               concurrency=2, duration=0.1))
    elapsed = time.perf_counter() - start
    assert 2 <= len(out) <= 12 and t.in_flight == 0        # about 0.1 / 0.02 * 2 = 10
    assert elapsed < 0.1 + 0.02 + 0.1
    # open loop: arrivals after the duration are never sent
    out = asyncio.run(dispatch(range(100), (0.01 * i for i in itertools.count()), t.send,
                               start=time.perf_counter(), duration=0.05))
    assert len(out) == 5

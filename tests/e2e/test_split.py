"""`tandem up` applies its CPU split: each worker process runs on the cores and with the torch
threads the policy chose for this machine (read from /proc and from the worker's own Status)."""

from __future__ import annotations

import time

import pytest

from tandem.split import choose_split, usable_cpus
from tandem.up import UpConfig, cpu_split

pytestmark = pytest.mark.slow


def test_each_worker_runs_where_the_split_says(stack):
    split = cpu_split(UpConfig())                     # what `auto` picks on this machine
    for role in ("prefill", "decode"):
        (placement,) = split.placements(role)
        assert stack.worker_placements(role) == [(placement.cpus, placement.threads)], role
    assert f"tandem up: cpu split: {split.describe()}\n" in stack.lines


def test_a_split_with_two_decode_workers_starts_both_on_their_cores_and_serves(tmp_path):
    from tests.e2e.conftest import start_up, stop_up

    split = choose_split("1:2x1", usable_cpus())
    s = start_up(tmp_path, args=["--split", "1:2x1"])
    try:
        deadline = time.monotonic() + 120            # the second decode worker may register later
        while len(s.registry().live("decode")) < 2:
            assert time.monotonic() < deadline, "".join(s.lines[-40:])
            time.sleep(0.5)
        got = sorted(s.worker_placements("decode"))
        assert got == sorted((p.cpus, p.threads) for p in split.placements("decode"))
        r = s.client().chat.completions.create(model="SmolLM2-135M-Instruct", max_tokens=8,
                                               messages=[{"role": "user", "content": "Hi"}])
        assert r.usage.completion_tokens >= 1
    finally:
        stop_up(s)

"""The supervisor restarts exited workers with doubling backoff (real short-lived processes)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from tandem.supervise import Slot, Supervisor


def spawn(role: str, core) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "pass"])   # exits at once, like a crashing worker


def run_until(sup: Supervisor, restarts: int, within: float) -> float:
    started = time.monotonic()
    while sup.restarts < restarts:
        assert time.monotonic() - started < within
        sup.tick()
        time.sleep(0.01)
    return time.monotonic() - started


def test_an_exited_worker_is_restarted_with_doubling_backoff(capsys):
    sup = Supervisor(spawn, [Slot("decode", None, spawn("decode", None))], base_s=0.1, max_s=0.4)
    first = run_until(sup, 1, within=5)
    three_more = run_until(sup, 4, within=10)
    assert 0.1 <= first < 1.0
    assert three_more >= 0.2 + 0.4 + 0.4          # 0.1 doubled, then capped at max_s
    assert sup.slots[0].restarts == 4 and sup.slots[0].proc.wait(5) == 0
    err = capsys.readouterr().err
    assert "the decode worker" in err and "restart 4 of this worker, 4 in all" in err


def test_a_worker_that_stayed_up_restarts_after_the_base_delay_again():
    sup = Supervisor(spawn, [Slot("prefill", None, spawn("prefill", None))], base_s=0.05, max_s=10,
                     stable_s=0.0)
    run_until(sup, 3, within=5)
    assert all(run_until(sup, n, within=0.5) < 0.3 for n in (4, 5))


def test_a_closed_supervisor_restarts_nothing():
    sup = Supervisor(spawn, [Slot("decode", None, spawn("decode", None))], base_s=0.0)
    procs = sup.close()
    procs[0].wait(5)
    for _ in range(3):
        sup.tick()
        time.sleep(0.01)
    assert sup.restarts == 0 and sup.procs == procs


def test_close_waits_for_a_restart_in_progress_and_returns_its_process():
    """Ctrl-C while a worker is being restarted: the new process is among those to stop."""
    def slow_spawn(role, core):
        time.sleep(0.3)
        return spawn(role, core)

    sup = Supervisor(slow_spawn, [Slot("decode", None, spawn("decode", None))], base_s=0.0)
    sup.slots[0].proc.wait(5)
    sup.tick()                                    # schedules the restart (delay 0)
    ticking = threading.Thread(target=sup.tick)   # restarts: inside the slow spawn
    ticking.start()
    time.sleep(0.1)
    procs = sup.close()
    ticking.join(5)
    assert sup.restarts == 1 and procs == [sup.slots[0].proc]
    sup.tick()
    assert sup.restarts == 1

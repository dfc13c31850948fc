"""One OpenMP team per worker (services/engine/omp.py), checked in a fresh process laid out as a
worker is: torch ops on the main thread while loading, then ``release``/``serial``, a pool thread
that starts with ``serial`` and copies a large tensor, and an engine-loop thread."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from services.engine import omp

SCRIPT = r"""
import os, threading, json, time
import torch
from services.engine import omp

def threads():
    return len(os.listdir(f"/proc/{os.getpid()}/task"))

torch.set_num_threads(2)
big = torch.randn(8_000_000)
(big * 2).sum()                                 # "loading": the main thread's team of 2
loaded = threads()
out = {"released": omp.release(), "serial": omp.serial()}
out["freed"] = loaded - threads()
(big * 2).sum()                                 # the main thread again: alone now
out["main_after"] = threads() - (loaded - out["freed"])

def grpc_like():
    copy = torch.empty_like(big)
    copy.copy_(big)
    (copy * 3).sum()
    return torch.get_num_threads()

with omp.executor(1) as pool:
    base = threads()                            # the pool's thread does not exist yet
    out["pool_threads"] = pool.submit(grpc_like).result()
    out["pool_added"] = threads() - base        # its own thread only, no team

def loop():
    before = threads()
    (big * 2).sum()
    out["loop_threads"] = torch.get_num_threads()
    out["loop_added"] = threads() - before

time.sleep(0.2)                                 # let the pool's thread finish exiting
t = threading.Thread(target=loop)
t.start(); t.join()
print(json.dumps(out))
"""


@pytest.mark.skipif(omp.libgomp() is None, reason="torch does not run on libgomp here")
def test_only_the_engine_loop_keeps_an_openmp_team():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[3])
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["released"] and out["serial"]
    assert out["freed"] >= 1                 # the loading team's worker thread is gone
    assert out["main_after"] == 0            # and serial ops on main start no new one
    assert out["pool_threads"] == 1 and out["pool_added"] == 1
    assert out["loop_threads"] == 2 and out["loop_added"] == 1   # the loop thread's team: one more thread


def test_serial_reports_what_it_did():
    got = []
    t = threading.Thread(target=lambda: got.append(omp.serial()))
    t.start()
    t.join()
    assert got == [omp.libgomp() is not None]

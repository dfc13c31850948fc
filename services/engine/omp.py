"""One OpenMP team per worker process: the engine loop's.

torch's CPU build runs its parallel ops on GNU OpenMP (libgomp). libgomp gives every thread that
starts a parallel region a team of its own, and once a process holds more OpenMP threads than it
has CPUs, a team's threads stop spinning between regions (libgomp's "throttled" spin, ~100
iterations) and sleep in the kernel instead, so every parallel region pays for waking them. A
decode step at one row is more than 150 short parallel regions (120 matmuls, 30 attentions, the
head), so on a 2-cpu machine that cost about a seventh of a step (docs/benchmarks.md §8, "One
OpenMP team"). The price: the loop team's second thread now spins between regions on a cpu the
prefill worker may share (`tandem up`'s 2-cpu split), which lengthened TTFT at 32 streams (§9.1).

A worker's main thread loads the engine (one team) and the engine loop thread steps it (a second
team); gRPC threads that copy or checksum KV would start more. So workers call:

- ``release()`` on the main thread once the engine is loaded: frees that thread's team
  (``omp_pause_resource_all``, OpenMP 5.0);
- ``serial()`` on every thread that is not the engine loop (the main thread after loading, gRPC and
  KV threads as they start: ``executor()`` makes a thread pool whose threads do): torch ops on
  that thread then run on it alone, so only the engine loop's team exists.

Both do nothing and return False where torch does not run on libgomp (other builds, other OSes).
"""

from __future__ import annotations

import ctypes
import functools
from concurrent import futures

import torch

OMP_PAUSE_SOFT = 1


@functools.cache
def libgomp() -> ctypes.CDLL | None:
    """The libgomp this process loaded with torch, or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {parts[-1] for parts in map(str.split, maps) if len(parts) >= 6 and "libgomp" in parts[-1]}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if hasattr(lib, "omp_set_num_threads") and hasattr(lib, "omp_pause_resource_all"):
            return lib
    return None


def release() -> bool:
    """Free the OpenMP team of the calling thread (it is rebuilt if the thread runs a parallel op
    again). True when libgomp did."""
    lib = libgomp()
    return lib is not None and lib.omp_pause_resource_all(OMP_PAUSE_SOFT) == 0


def serial() -> bool:
    """Make torch ops on the calling thread run on this thread alone. True when it took effect."""
    lib = libgomp()
    if lib is None:
        return False
    torch.get_num_threads()      # ATen sets a thread's OpenMP thread count once, lazily: let it first
    lib.omp_set_num_threads(1)
    return torch.get_num_threads() == 1


def executor(max_workers: int, thread_name_prefix: str = "") -> futures.ThreadPoolExecutor:
    """A thread pool for a worker process: each of its threads runs torch ops serially
    (``serial()``), so the engine loop's OpenMP team stays the only one."""
    return futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=thread_name_prefix,
                                      initializer=serial)

"""The machine a benchmark runs on: its limits, other processes' load, and small shared helpers.

Shared by ``benchmarks/engine.py`` and ``benchmarks/throughput.py``: dense matmul rate and memory
bandwidth (the rooflines' inputs), a ``/proc/stat`` meter of CPU taken by other processes, a quick
speed probe, ``lscpu``/version facts, and where the converted model lives.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import torch


# ----------------------------------------------------------------------------------------------
# contention: how much CPU other processes (this machine may be shared) took while we measured
# ----------------------------------------------------------------------------------------------
class CpuMeter:
    """Busy CPU-seconds of the whole machine (``/proc/stat``) minus this process's own CPU time.

    ``other_cores`` is the average number of cores other processes kept busy during the interval;
    anything well above 0 means the numbers measured in it are pessimistic.
    """

    def __init__(self):
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def _busy(self) -> float | None:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return (sum(v[:8]) - idle) / self._tick

    def __enter__(self) -> "CpuMeter":
        self.wall0, self.cpu0, self.busy0 = time.perf_counter(), time.process_time(), self._busy()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.own_cores = (time.process_time() - self.cpu0) / self.wall
        busy = self._busy()
        self.other_cores = (float("nan") if busy is None or self.busy0 is None
                            else max(0.0, (busy - self.busy0) / self.wall - self.own_cores))


QUIET = {"max_wait": 0.0, "threshold": 0.25, "waited": 0.0}


def wait_quiet() -> None:
    """Wait (up to ``--wait-quiet`` seconds) until other processes use < ``threshold`` cores."""
    deadline = time.perf_counter() + QUIET["max_wait"]
    t0 = time.perf_counter()
    while time.perf_counter() < deadline:
        with CpuMeter() as m:
            time.sleep(0.5)
        if not m.other_cores >= QUIET["threshold"]:  # also true when /proc/stat is unreadable
            break
    QUIET["waited"] += time.perf_counter() - t0


def contended(m) -> bool:
    """True when a kept measurement (``Result`` or transformers dict) ran while others were busy."""
    if m is None:
        return False
    other = m["other_cores"] if isinstance(m, dict) else m.other_cores
    return other > QUIET["threshold"]


def speed_probe() -> float:
    """fp32 GFLOP/s of a small all-threads matmul (~30 ms), taken next to each measurement.

    On a shared VM the CPU time this process gets can change by 2x from minute to minute without
    any other process being visible (``other_cores`` ~ 0); a low probe marks such a period.
    """
    wait_quiet()
    a = torch.ones(1024, 1024)
    b = torch.ones(1024, 1024)
    return 2 * 1024 ** 3 / best_seconds(lambda: torch.matmul(a, b), 3) / 1e9


# ----------------------------------------------------------------------------------------------
# machine limits
# ----------------------------------------------------------------------------------------------
def best_seconds(fn, reps: int) -> float:
    """Fastest of ``reps`` timed calls of ``fn``, after one untimed call."""
    fn()  # warm-up (first touch, kernel selection)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure_matmul(dtype: torch.dtype, sizes=(2048, 3072, 4096), reps: int = 3) -> dict:
    """Best GFLOP/s of square ``torch.matmul`` (2·n³ FLOPs) over a few sizes, all threads."""
    g = torch.Generator().manual_seed(0)
    rates = {}
    for n in sizes:
        a = torch.randn(n, n, generator=g).to(dtype)
        b = torch.randn(n, n, generator=g).to(dtype)
        out = torch.empty(n, n, dtype=dtype)
        t = best_seconds(lambda: torch.matmul(a, b, out=out), reps)
        rates[n] = 2 * n ** 3 / t / 1e9
    return {"gflops": max(rates.values()), "by_size": rates}


def measure_bandwidth(mib: int = 512, reps: int = 5) -> dict:
    """Memory bandwidth (GB/s, 1e9) over buffers far larger than the L3 cache.

    ``copy`` counts bytes read + bytes written (2 × size; a write-allocate's extra read is not
    counted, so this is a lower bound of the real traffic); ``sum`` counts bytes read; ``add``
    (z = x + y) counts 2 reads + 1 write. The roofline uses the best of the three.
    """
    n = (mib << 20) // 4
    x = torch.ones(n, dtype=torch.float32)
    y = torch.ones(n, dtype=torch.float32)
    z = torch.empty(n, dtype=torch.float32)
    z.fill_(0)  # first touch outside the timed region
    nbytes = n * 4
    copy = 2 * nbytes / best_seconds(lambda: z.copy_(x), reps) / 1e9
    read = nbytes / best_seconds(lambda: x.sum(), reps) / 1e9
    add = 3 * nbytes / best_seconds(lambda: torch.add(x, y, out=z), reps) / 1e9
    return {"gbps": max(copy, read, add), "copy": copy, "sum": read, "add": add, "buffer_mib": mib}


class Limits:
    """Matmul rates and memory bandwidth measured during one run; the rooflines use the best of them."""

    def __init__(self):
        self.runs: list[dict] = []

    def measure(self, label: str) -> None:
        wait_quiet()
        with CpuMeter() as meter:
            run = {"label": label, "float32": measure_matmul(torch.float32),
                   "bfloat16": measure_matmul(torch.bfloat16), "bandwidth": measure_bandwidth()}
        run["other_cores"] = meter.other_cores
        self.runs.append(run)
        b = run["bandwidth"]
        log(f"limits ({label}): matmul fp32 {run['float32']['gflops']:.1f} GFLOP/s, bf16 "
            f"{run['bfloat16']['gflops']:.1f} GFLOP/s (square n={'/'.join(map(str, run['float32']['by_size']))}, "
            f"best); memory bandwidth {b['gbps']:.1f} GB/s (copy {b['copy']:.1f}, sum {b['sum']:.1f}, "
            f"add {b['add']:.1f}; {b['buffer_mib']} MiB buffers); other load {meter.other_cores:.2f} cores")

    def best(self, peak_gflops: str = "", bandwidth_gbps: float = 0.0) -> tuple[dict[str, float], float]:
        """Peak FLOP/s by dtype name and bandwidth in bytes/s; given overrides ("fp32,bf16" GFLOP/s, GB/s) win."""
        peaks = {n: max(r[n]["gflops"] for r in self.runs) * 1e9 for n in ("float32", "bfloat16")
                 } if self.runs else {}
        bw = max(r["bandwidth"]["gbps"] for r in self.runs) * 1e9 if self.runs else float("nan")
        if peak_gflops:
            f32, bf16 = (float(x) for x in peak_gflops.split(","))
            peaks = {"float32": f32 * 1e9, "bfloat16": bf16 * 1e9}
        if bandwidth_gbps:
            bw = bandwidth_gbps * 1e9
        return peaks, bw


def cache_dir() -> Path:
    return Path(os.environ.get("TANDEM_CACHE_DIR") or Path.home() / ".cache" / "tandem")


def machine_info() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("Model name", "Core(s) per socket", "Thread(s) per core", "L3 cache",
                             "Flags"):
                v = v.strip()
                if k.strip() == "Flags":
                    v = " ".join(f for f in v.split() if f.startswith(("avx512_bf16", "amx", "avx512f")))
                info[k.strip()] = v
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        root = Path(__file__).resolve().parents[1]
        git = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True,  # noqa: E731
                                        timeout=10).stdout.strip()
        commit = git("rev-parse", "--short", "HEAD")
        if commit:
            dirty = git("status", "--porcelain", "--", "services/engine")
            info["commit"] = commit + (" (services/engine modified)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def parse_ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def log(msg: str) -> None:
    print(msg, flush=True)

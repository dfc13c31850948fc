"""How ``tandem up`` divides the machine's CPUs between its workers: which cores each may run on
and how many torch threads it uses.

The usable CPUs are this process's affinity set, cut to the cgroup CPU quota rounded up (a
container limited to 2 CPUs on a 64-core host gets 2, the first two of its affinity set). The
``auto`` policy (docs/architecture.md "CPU split"), for n usable CPUs:

- ``--colocated``: the one worker gets all n cores and n threads.
- n = 1: both workers share the core, one thread each.
- n = 2: decode gets both cores and 2 threads; prefill gets 1 thread on the first core, shared
  with decode. Decode is what saturates (prefill idles at ~2% of a core at concurrency 32 with
  128-token prompts and outputs); the 1:1 split left the prefill core idle. Measured side by side:
  docs/benchmarks.md §9.2. While a prefill runs, decode steps with 1 thread (``shared``: the
  decode worker's ``TANDEM_SHARED_THREADS``), so the two never split the shared core.
- n ≥ 3: disjoint cores, prefill the first ⌈n/4⌉, decode the rest; threads = cores. A quarter keeps
  long prompts' TTFT down without taking decode's cores (prefill runs whole prompts as large
  matmuls, several times the work per core-second of a decode step).

``P:D`` (``--split`` / ``TANDEM_SPLIT``) asks for P prefill and D decode threads instead: prefill
on the first P usable cores, decode on the last D, overlapping when P + D > n (a decode worker
then leaves the shared cores to a running prefill, as above). ``P:WxD`` runs W decode workers of
D threads each, on disjoint cores counted from the last (``1:2x1``: two one-thread decode workers,
on cpus 0 and 1 of two).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

SPLIT_PATTERN = re.compile(r"auto|(\d+):(?:(\d+)x)?(\d+)")
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Placement:
    """Where one worker runs: ``cpus`` it is pinned to (empty: not pinned), ``threads`` torch
    intra-op threads (0: torch's default) and, for a decode worker, ``shared`` of those threads it
    leaves idle while a prefill runs on cores it shares."""

    cpus: tuple[int, ...] = ()
    threads: int = 0
    shared: int = 0

    def describe(self) -> str:
        threads = f"{self.threads} thread{'s' * (self.threads != 1)}" if self.threads else "default threads"
        if not self.cpus:
            return f"{threads}, not pinned"
        shared = f" ({self.threads - self.shared} while prefill runs)" if self.shared else ""
        return f"{threads} on cpu{'s' * (len(self.cpus) > 1)} {_ranges(self.cpus)}{shared}"


@dataclass(frozen=True)
class CpuSplit:
    """One ``(role, placement)`` per worker ``tandem up`` starts; ``source`` says how they were chosen."""

    workers: tuple[tuple[str, Placement], ...]
    source: str

    def placements(self, role: str) -> list[Placement]:
        return [p for r, p in self.workers if r == role]

    def describe(self) -> str:
        """``prefill 1 thread on cpu 0, decode 2 threads on cpus 0-1 (auto, 2 usable cpus)``."""
        return ", ".join(f"{role} {p.describe()}" for role, p in self.workers) + f" ({self.source})"


def usable_cpus(affinity: set[int] | None = None, quota: float | None = None) -> tuple[int, ...]:
    """The CPUs this process may use (default: its affinity set and cgroup quota), at least one."""
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    if quota is None:
        quota = cgroup_cpu_quota()
    cpus = tuple(sorted(affinity))
    if quota is not None:
        cpus = cpus[:max(1, math.ceil(quota))]
    return cpus


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs' worth of time this process's cgroup may use (the tightest limit on its path to the
    root; cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``), ``None`` when unlimited/unknown."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":                           # v2: "0::/path"
            limits += [_v2_limit(d / "cpu.max") for d in _dirs(root, path)]
        elif "cpu" in controllers.split(","):            # v1: "4:cpu,cpuacct:/path"
            base = root / controllers
            limits += [_v1_limit(d) for d in _dirs(base, path)]
    limits = [x for x in limits if x is not None]
    return min(limits) if limits else None


def _dirs(base: Path, path: str) -> list[Path]:
    """``base/path`` and each parent up to ``base`` (a container often sees its cgroup at /)."""
    parts = [p for p in path.split("/") if p]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _v2_limit(path: Path) -> float | None:
    try:
        quota, period = path.read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_limit(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 else quota / period


def auto_split(cpus: tuple[int, ...]) -> CpuSplit:
    """The documented policy (module docstring) for the usable ``cpus``."""
    n = len(cpus)
    source = f"auto, {n} usable cpu{'s' * (n != 1)}"
    if n == 1:
        return _split(Placement(cpus, 1), Placement(cpus, 1), source=source)
    if n == 2:
        return _split(Placement(cpus[:1], 1), Placement(cpus, 2, shared=1), source=source)
    p = math.ceil(n / 4)
    return _split(Placement(cpus[:p], p), Placement(cpus[p:], n - p), source=source)


def choose_split(spec: str, cpus: tuple[int, ...], pin: bool = True) -> CpuSplit:
    """``spec`` is ``auto`` or ``P:D`` (threads); ``ValueError`` names what is wrong. Without
    ``pin``, the thread counts stand and nothing is pinned."""
    m = SPLIT_PATTERN.fullmatch(spec)
    if not m:
        raise ValueError(f"split must be 'auto', 'P:D' or 'P:WxD' (prefill:decode threads), got {spec!r}")
    split = auto_split(cpus) if spec == "auto" else _explicit(spec, int(m[1]), int(m[2] or 1), int(m[3]), cpus)
    if not pin:
        split = CpuSplit(tuple((r, Placement((), pl.threads)) for r, pl in split.workers),   # shared: unknown
                         split.source + ", not pinned")
    return split


def _explicit(spec: str, p: int, workers: int, d: int, cpus: tuple[int, ...]) -> CpuSplit:
    n = len(cpus)
    if not (1 <= p <= n and workers >= 1 and 1 <= d and workers * d <= n):
        raise ValueError(f"split {spec}: prefill needs 1 to {n} threads and the decode workers 1 to {n} "
                         f"between them (usable cpus: {_ranges(cpus)})")
    prefill = cpus[:p]
    decode = [Placement(c, d, shared=min(d - 1, len(set(c) & set(prefill))))
              for c in (cpus[n - (i + 1) * d:n - i * d] for i in reversed(range(workers)))]
    return _split(Placement(prefill, p), *decode, source=f"{spec}, {n} usable cpus")


def colocated_split(cpus: tuple[int, ...], pin: bool = True) -> CpuSplit:
    return CpuSplit((("colocated", Placement(cpus if pin else (), len(cpus))),),
                    f"colocated, {len(cpus)} usable cpu{'s' * (len(cpus) != 1)}")


def _split(prefill: Placement, *decode: Placement, source: str) -> CpuSplit:
    return CpuSplit((("prefill", prefill), *(("decode", d) for d in decode)), source)


def _ranges(cpus: tuple[int, ...]) -> str:
    """``(0, 1, 2, 5)`` → ``0-2,5`` (the kernel's cpu-list format)."""
    out, start = [], None
    for i, c in enumerate(cpus):
        if start is None:
            start = c
        if i + 1 == len(cpus) or cpus[i + 1] != c + 1:
            out.append(str(start) if start == c else f"{start}-{c}")
            start = None
    return ",".join(out)

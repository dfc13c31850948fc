"""PNG plots of one or more runs (label → records): latency CDFs and ITL over time.

- ``latency_cdf.png``: empirical CDFs of TTFT, TPOT and E2E latency (ms), one line per run.
- ``itl_over_time.png``: every inter-chunk gap (ms) against the time since the run's start at which
  it ended, one colour per run; shows stalls, e.g. decode steps held up by a prefill.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from . import metrics as m
from .record import RequestRecord

Runs = Mapping[str, Sequence[RequestRecord]]
CDF_PANELS = (("TTFT", m.ttft), ("TPOT", m.tpot), ("E2E latency", m.e2e))


def write_plots(runs: Runs, plot_dir: Path) -> list[Path]:
    """Write both plots into ``plot_dir``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    plot_dir.mkdir(parents=True, exist_ok=True)
    return [latency_cdfs(runs, plot_dir / "latency_cdf.png"),
            itl_over_time(runs, plot_dir / "itl_over_time.png")]


def latency_cdfs(runs: Runs, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CDF_PANELS), figsize=(15, 4.2))
    for ax, (title, metric) in zip(axes, CDF_PANELS):
        for label, records in runs.items():
            values = [v for r in records if r.success and (v := metric(r)) is not None]
            if values:
                xs = np.sort(values) * 1000
                ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", label=label)
        ax.set(title=title, xlabel="ms", ylabel="fraction of requests", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    _legend(axes[0], loc="lower right")
    return _save(fig, path)


def itl_over_time(runs: Runs, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 4.5))
    for label, records in runs.items():
        ok = [r for r in records if r.success and len(r.chunk_times) > 1]
        if ok:
            at = np.concatenate([r.chunk_times[1:] for r in ok])
            gaps = np.concatenate([np.diff(r.chunk_times) for r in ok]) * 1000
            ax.scatter(at, gaps, s=3, alpha=0.4, label=label, rasterized=True)
    ax.set(title="Inter-token latency over time", xlabel="seconds since start",
           ylabel="gap between content chunks (ms)")
    ax.grid(alpha=0.3)
    _legend(ax, loc="upper right", markerscale=4)
    return _save(fig, path)


def _legend(ax, **kwargs) -> None:
    if ax.get_legend_handles_labels()[0]:       # nothing to label when every request failed
        ax.legend(fontsize="small", **kwargs)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

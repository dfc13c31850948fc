"""The ``/status`` page as plain server-rendered HTML (no scripts, no build step).

It refreshes itself every ``REFRESH_S`` seconds (``<meta http-equiv="refresh">``). Every value
that came from outside this process (worker ids, addresses, Redis fields) is HTML-escaped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from html import escape

from services.registry import WorkerInfo

from .recent import RecentStats

REFRESH_S = 5
STYLE = """body{font:14px system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}
th{background:#f3f3f3}.ok{color:#176b1b}.bad{color:#b3261e}h1{font-size:20px}h2{font-size:16px;margin-top:24px}"""


@dataclass(frozen=True)
class RedisState:
    reachable: bool
    ping_ms: float | None = None
    version: str = ""
    aof_enabled: str = ""
    used_memory: str = ""
    error: str = ""


def render(model: str, uptime_s: float, workers: list[WorkerInfo], workers_error: str,
           recent: RecentStats, redis: RedisState) -> str:
    body = "\n".join([
        f"<h1>Tandem — {escape(model)}</h1>",
        f"<p>gateway up {uptime_s:.0f} s · page rendered {time.strftime('%Y-%m-%d %H:%M:%S')} · "
        f"refreshes every {REFRESH_S} s · <a href=\"/metrics\">/metrics</a></p>",
        "<h2>Workers</h2>", _workers(workers, workers_error),
        f"<h2>Requests (this gateway, last {recent.window_s:.0f} s)</h2>", _recent(recent),
        "<h2>Redis</h2>", _redis(redis)])
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>Tandem status</title>"
            f"<meta http-equiv=\"refresh\" content=\"{REFRESH_S}\"><style>{STYLE}</style></head>"
            f"<body>{body}</body></html>")


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    lines = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{lines}</table>"


def _workers(workers: list[WorkerInfo], error: str) -> str:
    if error:
        return f"<p class=\"bad\">registry unreachable: {escape(error)}</p>"
    if not workers:
        return "<p class=\"bad\">no live workers</p>"
    now = time.time()
    rows = [[escape(w.role), escape(w.worker_id), escape(w.address),
             escape(w.metrics_address) or "—",
             f"{w.num_running} running, {w.num_waiting} waiting / {w.max_num_seqs} (load {w.load:.2f})",
             f"{_kv_usage(w):.1%}", f"{max(0.0, now - w.updated_at):.1f} s"]
            for w in sorted(workers, key=lambda w: (w.role, w.worker_id))]
    counts = ", ".join(f"{sum(w.role == r for w in workers)} {r}" for r in ("prefill", "decode", "colocated"))
    return f"<p>{counts}</p>" + _table(
        ["role", "worker", "address", "metrics", "load", "KV cache used", "heartbeat age"], rows)


def _kv_usage(w: WorkerInfo) -> float:
    return 1.0 - w.free_blocks / w.total_blocks if w.total_blocks else 0.0


def _recent(r: RecentStats) -> str:
    def ms(p: dict[str, float], key: str) -> str:
        return f"{p[key] * 1000:.1f} ms" if key in p else "—"

    rows = [["TTFT", *(ms(r.ttft, k) for k in ("p50", "p90", "p99"))],
            ["ITL", *(ms(r.itl, k) for k in ("p50", "p90", "p99"))]]
    return (f"<p>{r.requests} generations ({r.rate:.2f}/s), {r.errors} errors</p>"
            + _table(["latency", "p50", "p90", "p99"], rows))


def _redis(r: RedisState) -> str:
    if not r.reachable:
        return f"<p class=\"bad\">unreachable: {escape(r.error)}</p>"
    rows = [["ping", f"{r.ping_ms:.2f} ms"], ["version", escape(r.version)],
            ["AOF enabled", escape(r.aof_enabled)], ["memory used", escape(r.used_memory)]]
    return "<p class=\"ok\">reachable</p>" + _table(["", ""], rows)

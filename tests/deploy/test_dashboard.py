"""The Grafana dashboard: committed as generated, importable, and naming only exported metrics.

The live-stack twin (tests/e2e/test_observability.py) checks the same names against what the
running gateway and workers actually serve.
"""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path
from types import SimpleNamespace

from gateway.ops.metrics import GatewayMetrics
from services.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "tandem.json"
NAME = re.compile(r"\btandem(?::|_gateway_)[A-Za-z0-9_:]+")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])] + [
        v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]


def names_in(dashboard: dict) -> set[str]:
    return {n for e in exprs(dashboard) for n in NAME.findall(e)}


class FakeEngine:
    """Just what ``WorkerMetrics.bind`` reads."""

    def __init__(self):
        self.scheduler = SimpleNamespace(running=[], waiting=[])
        self.blocks = SimpleNamespace(num_free=1, num_blocks=1)

    def held_kv_bytes(self) -> int:
        return 0

    def prefix_cache_stats(self):
        return SimpleNamespace(queries=0, hits=0)


def exported_names() -> set[str]:
    """Every sample name the worker and gateway registries can serve."""
    names = set()
    worker = WorkerMetrics("m", "decode", "w").bind(FakeEngine())
    for registry in (worker.registry, GatewayMetrics("m").registry):
        for family in registry.collect():
            names |= {family.name + s for s in SUFFIXES[family.type]}
    return names


def test_the_committed_dashboard_is_what_the_generator_writes():
    generator = runpy.run_path(str(ROOT / "deploy" / "grafana" / "generate.py"))
    assert DASHBOARD.read_text() == generator["render"](), "run: python deploy/grafana/generate.py"


def test_the_dashboard_is_importable_and_covers_what_operators_watch():
    d = json.loads(DASHBOARD.read_text())
    assert d["__inputs"][0]["name"] == "DS_PROMETHEUS" and d["uid"] and d["schemaVersion"] >= 36
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    text = " ".join(exprs(d))
    for needed in ("tandem:time_to_first_token_seconds_bucket", "tandem:inter_token_latency_seconds_bucket",
                   "tandem:e2e_request_latency_seconds_bucket", "tandem:num_requests_waiting",
                   "tandem:kv_cache_usage_perc", "tandem:kv_handoff_seconds_bucket",
                   "tandem:kv_handoff_failures_total", "tandem_gateway_requests_total", "by(role"):
        assert needed in text, needed


def test_every_metric_the_dashboard_names_is_exported():
    missing = names_in(json.loads(DASHBOARD.read_text())) - exported_names()
    assert not missing, f"the dashboard queries metrics nobody exports: {sorted(missing)}"

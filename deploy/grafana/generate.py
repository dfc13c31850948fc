"""Writes deploy/grafana/tandem.json, the Grafana dashboard: ``python deploy/grafana/generate.py``.

The JSON is committed (import it as is); tests/deploy/test_dashboard.py checks that it matches
this script and that every metric a query names is one Tandem exports (the live-stack test
scrapes the running processes for the same names). Queries filter on ``$model_name``, ``$role``
and use ``$__rate_interval``, as vLLM's reference dashboard does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).with_name("tandem.json")
W = 'model_name="$model_name", role=~"$role"'      # worker series
G = 'model_name="$model_name"'                      # gateway token and latency series
R = "[$__rate_interval]"


def quantiles(metric: str, labels: str, by: str = "") -> list[tuple[str, str]]:
    group = f"le{', ' + by if by else ''}"
    legend = f"{{{{{by}}}}} " if by else ""
    return [(f"histogram_quantile({q}, sum by({group})(rate({metric}_bucket{{{labels}}}{R})))",
             f"{legend}p{round(q * 100)}") for q in (0.5, 0.9, 0.99)] + [
        (f"sum{f' by({by})' if by else ''}(rate({metric}_sum{{{labels}}}{R})) / "
         f"sum{f' by({by})' if by else ''}(rate({metric}_count{{{labels}}}{R}))", f"{legend}mean")]


ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]]]]]] = [
    ("Client view (gateway)", [
        ("Time to first token (gateway)", "s", quantiles("tandem_gateway_time_to_first_token_seconds", G)),
        ("Inter-token latency (gateway)", "s", quantiles("tandem_gateway_inter_token_latency_seconds", G)),
        ("End-to-end latency (gateway)", "s", quantiles("tandem_gateway_e2e_request_latency_seconds", G)),
        ("HTTP requests by route and status", "reqps", [
            (f"sum by(route, status)(rate(tandem_gateway_requests_total{R}))", "{{route}} {{status}}")]),
        ("Error rate", "percentunit", [
            (f'sum(rate(tandem_gateway_requests_total{{status=~"5.."}}{R})) / '
             f"sum(rate(tandem_gateway_requests_total{R}))", "HTTP 5xx share"),
            (f'sum by(finished_reason)(rate(tandem_gateway_generations_total{{{G}, '
             f'finished_reason=~"error|abort"}}{R})) / sum(rate(tandem_gateway_generations_total{{{G}}}{R}))',
             "generations {{finished_reason}}")]),
        ("Token throughput", "short", [
            (f"sum(rate(tandem_gateway_prompt_tokens_total{{{G}}}{R}))", "prompt tokens/s (gateway)"),
            (f"sum(rate(tandem_gateway_generation_tokens_total{{{G}}}{R}))", "generated tokens/s (gateway)"),
            (f"sum by(role)(rate(tandem:prompt_tokens_total{{{W}}}{R}))", "prompt tokens/s {{role}}"),
            (f"sum by(role)(rate(tandem:generation_tokens_total{{{W}}}{R}))", "generated tokens/s {{role}}")]),
    ]),
    ("Workers by role", [
        ("Time to first token by role", "s", quantiles("tandem:time_to_first_token_seconds", W, "role")),
        ("Inter-token latency by role", "s", quantiles("tandem:inter_token_latency_seconds", W, "role")),
        ("End-to-end latency by role", "s", quantiles("tandem:e2e_request_latency_seconds", W, "role")),
        ("Queue depth per worker", "short", [
            (f"tandem:num_requests_waiting{{{W}}}", "waiting {{role}} {{worker_id}}"),
            (f"tandem:num_requests_running{{{W}}}", "running {{role}} {{worker_id}}")]),
        ("KV cache usage per worker", "percentunit", [
            (f"tandem:kv_cache_usage_perc{{{W}}}", "{{role}} {{worker_id}}")]),
        ("Mean queue, prefill and decode time by role", "s", [
            (f"sum by(role)(rate(tandem:request_{stage}_seconds_sum{{{W}}}{R})) / "
             f"sum by(role)(rate(tandem:request_{stage}_seconds_count{{{W}}}{R}))", f"{stage} {{{{role}}}}")
            for stage in ("queue_time", "prefill_time", "decode_time")]),
        ("Finished requests by reason", "short", [
            (f"sum by(role, finished_reason)(increase(tandem:request_success_total{{{W}}}{R}))",
             "{{role}} {{finished_reason}}")]),
        ("Prompt tokens by source", "short", [
            (f"sum by(source)(rate(tandem:prompt_tokens_by_source_total{{{W}}}{R}))", "{{source}}")]),
        ("Prefix cache hit rate by role", "percentunit", [
            (f"sum by(role)(rate(tandem:prefix_cache_hits_total{{{W}}}{R})) / "
             f"sum by(role)(rate(tandem:prefix_cache_queries_total{{{W}}}{R}))", "{{role}}")]),
    ]),
    ("KV handoff (prefill → decode)", [
        ("KV handoffs per second and bytes per second", "short", [
            (f"sum by(worker_id)(rate(tandem:kv_handoff_seconds_count{{{W}}}{R}))", "handoffs/s {{worker_id}}"),
            (f"sum(rate(tandem:kv_transfer_sent_bytes_total{{{W}}}{R}))", "bytes/s sent (prefill)"),
            (f"sum(rate(tandem:kv_transfer_received_bytes_total{{{W}}}{R}))", "bytes/s received (decode)")]),
        ("KV handoff latency", "s", quantiles("tandem:kv_handoff_seconds", W)),
        ("KV handoff failures by reason", "short", [
            (f"sum by(role, reason)(rate(tandem:kv_handoff_failures_total{{{W}}}{R}))", "{{role}} {{reason}}")]),
        ("Held prefill KV and open pairs", "short", [
            (f"tandem:prefill_held_kv_bytes{{{W}}}", "held KV bytes {{worker_id}}"),
            (f"tandem:kv_pairs_open{{{W}}}", "pairs open {{role}} {{worker_id}}")]),
    ]),
    ("Gateway and Redis", [
        ("Live workers by role", "short", [("max by(role)(tandem_gateway_live_workers)", "{{role}}")]),
        ("In-flight generations", "short", [(f"sum(tandem_gateway_inflight_generations{{{G}}})", "in flight")]),
        ("Redis latency p99 by operation", "s", [
            (f'histogram_quantile(0.99, sum by(le, operation)(rate(tandem_gateway_redis_operation_seconds_bucket'
             f'{{operation!~".*_blocking"}}{R})))', "{{operation}}")]),
        ("Redis errors by operation", "short", [
            (f"sum by(operation, error)(rate(tandem_gateway_redis_errors_total{R}))", "{{operation}} {{error}}")]),
    ]),
]


def panel(pid: int, title: str, unit: str, targets: list[tuple[str, str]], x: int, y: int) -> dict:
    return {"id": pid, "type": "timeseries", "title": title,
            "datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"},
            "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}},
            "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}}
                        for i, (expr, legend) in enumerate(targets)]}


def variable(name: str, query: str, multi: bool) -> dict:
    return {"name": name, "type": "query", "label": name, "refresh": 2, "includeAll": multi, "multi": multi,
            "datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"},
            "definition": query, "query": {"query": query, "refId": f"{name}-query"},
            **({"allValue": ".*"} if multi else {})}


def dashboard() -> dict:
    panels, pid, y = [], 1, 0
    for title, row in ROWS:
        panels.append({"id": pid, "type": "row", "title": title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        for i, (ptitle, unit, targets) in enumerate(row):
            panels.append(panel(pid, ptitle, unit, targets, 12 * (i % 2), y + 8 * (i // 2)))
            pid += 1
        y += 8 * ((len(row) + 1) // 2)
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                      "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "__requires": [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
                       {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"}],
        "title": "Tandem: disaggregated prefill/decode serving", "uid": "tandem-pd", "version": 1,
        "schemaVersion": 39, "editable": True, "tags": ["tandem", "llm"], "timezone": "browser",
        "refresh": "10s", "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": [
            {"name": "DS_PROMETHEUS", "type": "datasource", "query": "prometheus", "label": "Datasource"},
            variable("model_name", "label_values(tandem:num_requests_running, model_name)", False),
            variable("role", 'label_values(tandem:num_requests_running{model_name="$model_name"}, role)', True)]},
        "panels": panels}


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    sys.stdout.write(f"wrote {OUT}\n")

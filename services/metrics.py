"""A worker's Prometheus metrics: vLLM's engine set under ``tandem:``, plus the KV handoff.

Names, types, units and buckets follow vLLM (``vllm:X`` is ``tandem:X``), so a vLLM dashboard
ports by a prefix swap. Every series carries ``model_name``, ``role`` (prefill | decode |
colocated) and ``worker_id``; the only other labels are ``finished_reason``, ``source`` and
``reason``, each from a small fixed set. No label carries a request id.

Who counts what (so that counts agree with the ``usage`` clients get, summed over workers):
- ``prompt_tokens_total``: every worker that takes in a request's prompt counts it once — the
  prefill worker computing it (``source=local_compute``), the decode worker importing its KV
  (``external_kv_transfer``), a colocated worker computing it. Per role it sums to the clients'
  ``prompt_tokens`` (a decode worker misses requests that ended at their first token).
- ``generation_tokens_total``: the worker that sampled the token — the prefill worker its first
  token, the decode worker the rest. Summed over all workers it is the clients'
  ``completion_tokens``.
- ``request_success_total{finished_reason}``: the worker where the request ended; a prefill
  worker counts a request whose KV it handed on as ``handoff``.
Gauges (queue lengths, KV usage, held KV, open pairs) are read at scrape time, off the hot path.
Each worker serves its own ``CollectorRegistry`` over HTTP (``serve``).
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily

from services.engine import RequestOutput

LABELS = ("model_name", "role", "worker_id")
# vLLM's buckets (vllm/v1/metrics/loggers.py) and NixlConnector's transfer-time buckets.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
               120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
HANDOFF_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 5.0)
SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")
FINISHED_REASONS = ("stop", "length", "abort", "error", "handoff")
HANDOFF_FAILURES = ("pairing", "timeout", "verify", "refused", "no_kv_blocks", "not_paired",
                    "not_held", "expired", "transfer")


class WorkerMetrics:
    """The metric families of one worker process, bound to its labels."""

    def __init__(self, model_name: str, role: str, worker_id: str,
                 registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.role = role
        self._labels = dict(model_name=model_name, role=role, worker_id=worker_id)
        self.running = self._gauge("num_requests_running", "Requests in the running batch")
        self.waiting = self._gauge("num_requests_waiting", "Requests queued for the scheduler")
        self.kv_usage = self._gauge("kv_cache_usage_perc", "KV cache usage, 0-1 (1 = full)")
        self.held_kv = self._gauge("prefill_held_kv_bytes", "Prompt KV held for a decode worker")
        self.pairs = self._gauge("kv_pairs_open", "torch.distributed pairs open with peer workers")
        self.prompt_tokens = self._counter("prompt_tokens", "Prompt tokens taken in")
        self.generation_tokens = self._counter("generation_tokens", "Tokens sampled here")
        self._by_source = self._family(Counter, "prompt_tokens_by_source",
                                       "Prompt tokens by where their KV came from", "source")
        self._success = self._family(Counter, "request_success", "Requests ended here, by reason",
                                     "finished_reason")
        self.ttft = self._histogram("time_to_first_token_seconds", "Arrival to first token", TTFT_BUCKETS)
        self.itl = self._histogram("inter_token_latency_seconds", "Between two tokens", ITL_BUCKETS)
        self.e2e = self._histogram("e2e_request_latency_seconds", "Arrival to the end here", E2E_BUCKETS)
        self.queue = self._histogram("request_queue_time_seconds", "Queued to first scheduled", E2E_BUCKETS)
        self.prefill = self._histogram("request_prefill_time_seconds", "Scheduled to first token", E2E_BUCKETS)
        self.decode = self._histogram("request_decode_time_seconds", "Decoding here", E2E_BUCKETS)
        self.inference = self._histogram("request_inference_time_seconds", "Scheduled to last token",
                                         E2E_BUCKETS)
        self.kv_sent = self._counter("kv_transfer_sent_bytes", "KV payload bytes sent to decode workers")
        self.kv_received = self._counter("kv_transfer_received_bytes", "KV payload bytes received")
        self.handoff = self._histogram("kv_handoff_seconds", "One KV pull, posted recv to verified",
                                       HANDOFF_BUCKETS)
        self._failures = self._family(Counter, "kv_handoff_failures", "KV handoffs that failed",
                                      "reason")
        self._zero()

    def _zero(self) -> None:
        """Create every labelled series at 0, so rates start from the first scrape."""
        for source in SOURCES:
            self._by_source.labels(**self._labels, source=source)
        for reason in FINISHED_REASONS:
            self._success.labels(**self._labels, finished_reason=reason)
        for reason in HANDOFF_FAILURES:
            self._failures.labels(**self._labels, reason=reason)

    # -- families -----------------------------------------------------------------------------
    def _family(self, kind, name: str, doc: str, *extra: str, **kw):
        return kind(f"tandem:{name}", doc, LABELS + extra, registry=self.registry, **kw)

    def _gauge(self, name: str, doc: str):
        return self._family(Gauge, name, doc).labels(**self._labels)

    def _counter(self, name: str, doc: str):
        return self._family(Counter, name, doc).labels(**self._labels)

    def _histogram(self, name: str, doc: str, buckets):
        return self._family(Histogram, name, doc, buckets=buckets).labels(**self._labels)

    def bind(self, engine, pairs: Callable[[], int] = lambda: 0) -> "WorkerMetrics":
        """Read the gauges from ``engine`` (and ``pairs``) whenever the registry is scraped."""
        self.running.set_function(lambda: len(engine.scheduler.running))
        self.waiting.set_function(lambda: len(engine.scheduler.waiting))
        self.kv_usage.set_function(lambda: 1.0 - engine.blocks.num_free / max(engine.blocks.num_blocks, 1))
        self.held_kv.set_function(engine.held_kv_bytes)
        self.pairs.set_function(pairs)
        self.registry.register(PrefixCacheCollector(engine, self._labels))
        return self

    # -- events -------------------------------------------------------------------------------
    def prompt(self, num_tokens: int, source: str) -> None:
        self.prompt_tokens.inc(num_tokens)
        self._by_source.labels(**self._labels, source=source).inc(num_tokens)

    def ended(self, reason: str) -> None:
        self._success.labels(**self._labels, finished_reason=reason).inc()

    def handoff_failed(self, reason: str) -> None:
        self._failures.labels(**self._labels, reason=reason).inc()

    def computed_prompt(self, out: RequestOutput) -> None:
        """``out``'s prompt went through this engine: cached tokens are hits, the rest computed."""
        self.prompt(out.prompt_tokens - out.cached_tokens, "local_compute")
        self.prompt(out.cached_tokens, "local_cache_hit")

    def prefilled(self, out: RequestOutput, arrival: float, now: float) -> None:
        """A prefill worker made ``out``'s first token (its KV held for handoff, or it ended)."""
        self.computed_prompt(out)
        self.generation_tokens.inc(len(out.new_token_ids))
        self.ttft.observe(now - arrival)
        self._stages(out, arrival, now)
        self.ended("handoff" if out.kv_held else out.finish_reason or "stop")

    def finished(self, out: RequestOutput, arrival: float, now: float) -> None:
        """A decode or colocated worker finished ``out``'s request (tokens were counted as sent)."""
        self._stages(out, arrival, now)
        for gap in out.decode_time_arr:
            self.itl.observe(gap)
        self.ended(out.finish_reason or "stop")

    def _stages(self, out: RequestOutput, arrival: float, now: float) -> None:
        t = out.timings
        self.e2e.observe(now - arrival)
        if t is None or t.scheduled is None or t.last_token is None:
            return
        self.queue.observe(t.scheduled - t.queued)
        self.inference.observe(t.last_token - t.scheduled)
        if self.role != "decode" and t.first_token is not None:
            self.prefill.observe(t.first_token - t.scheduled)
        if self.role == "decode":
            self.decode.observe(t.last_token - t.scheduled)
        elif self.role == "colocated" and t.first_token is not None:
            self.decode.observe(t.last_token - t.first_token)


class PrefixCacheCollector:
    """vLLM's ``prefix_cache_queries_total`` / ``prefix_cache_hits_total`` (tokens), read from the
    engine's own counters at scrape time."""

    def __init__(self, engine, labels: dict[str, str]):
        self.engine, self.labels = engine, labels

    def collect(self):
        stats = self.engine.prefix_cache_stats()
        for name, value, doc in (("queries", stats.queries, "Prompt tokens looked up in the prefix cache"),
                                 ("hits", stats.hits, "Prompt tokens found in the prefix cache")):
            family = CounterMetricFamily(f"tandem:prefix_cache_{name}", doc, labels=list(self.labels))
            family.add_metric(list(self.labels.values()), value)
            yield family


def handoff_failure_reason(message: str) -> str:
    """A bounded label for a failed KV handoff, from its error message (services/transfer)."""
    text = message.lower()
    for reason, words in (("verify", ("checksum", "header does not match", "malformed kv header")),
                          ("refused", ("refused", "holds no kv", "did not send")),
                          ("pairing", ("could not pair", "cannot pair", "pairing")),
                          ("timeout", ("timed out", "did not arrive", "timeout"))):
        if any(w in text for w in words):
            return reason
    return "transfer"


def serve(metrics: WorkerMetrics, host: str, port: int) -> int:
    """Serve ``metrics`` at ``http://host:port/metrics`` from a daemon thread; return the port."""
    server, _ = start_http_server(port, addr=host, registry=metrics.registry)
    return server.server_port

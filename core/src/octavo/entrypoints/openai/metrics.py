"""Prometheus metrics for /metrics, named as vLLM names them with the `octavo:` prefix.

Engine-wide numbers (queue sizes, KV usage, token counters, preemptions, prefix-cache tokens)
are read from the async engine's last stats snapshot at scrape time, so they cost nothing on
the hot path. Per-request numbers (TTFT, TPOT, latency, finish reasons) are observed when a
request finishes. Each server owns its own registry, so several apps can live in one process.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from octavo.async_engine import AsyncLLMEngine, RequestTiming
from octavo.outputs import RequestOutput

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

disable_created_metrics()  # no `_created` series: vLLM does not export them either

# vLLM's buckets, so dashboards built for it read ours unchanged
TTFT_BUCKETS = [
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
]
TPOT_BUCKETS = [
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
]
LATENCY_BUCKETS = [
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
]
TOKEN_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000]


class _EngineCollector(Collector):
    """Gauges and counters taken from the engine's stats snapshot at each scrape."""

    def __init__(self, engine: AsyncLLMEngine, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name

    def collect(self) -> Iterator[Any]:
        s = self.engine.stats
        labels = ["model_name"]
        value = [self.model_name]

        def gauge(name: str, doc: str, v: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(value, v)
            return g

        def counter(name: str, doc: str, v: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(value, v)
            return c

        yield gauge("octavo:num_requests_running", "Number of requests in the running batch.", s.num_running)
        yield gauge("octavo:num_requests_waiting", "Number of requests waiting to be scheduled.", s.num_waiting)
        yield gauge("octavo:kv_cache_usage_perc", "KV-cache usage: 0 is empty, 1 is full.", s.kv_cache_usage)
        yield gauge(
            "octavo:kv_cache_slot_utilization",
            "Fraction of allocated KV slots that hold tokens (1 - internal fragmentation).",
            getattr(s, "kv_slot_utilization", 1.0),
        )
        yield gauge(
            "octavo:num_requests_running_max",
            "Most requests seen running in one step since start.",
            s.max_num_running_seen,
        )
        yield counter("octavo:prompt_tokens", "Prompt tokens processed.", s.prompt_tokens_total)
        yield counter("octavo:generation_tokens", "Generated tokens.", s.generation_tokens_total)
        yield counter(
            "octavo:num_preemptions", "Preemptions (a running request lost its KV blocks).", s.num_preemptions_total
        )
        yield counter(
            "octavo:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", s.prefix_cache_queries
        )
        yield counter("octavo:prefix_cache_hits", "Prompt tokens found in the prefix cache.", s.prefix_cache_hits)


class ServerMetrics:
    """The server's registry; also the async engine's stat logger (on_request_finished)."""

    def __init__(self, engine: AsyncLLMEngine, model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_EngineCollector(engine, model_name))
        self.model_name = model_name

        def histogram(name: str, doc: str, buckets: Sequence[float]) -> Histogram:
            return Histogram(name, doc, ["model_name"], registry=self.registry, buckets=buckets).labels(model_name)

        self.ttft = histogram("octavo:time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS)
        self.tpot = histogram(
            "octavo:time_per_output_token_seconds",
            "Mean time per output token after the first, per request.",
            TPOT_BUCKETS,
        )
        self.e2e = histogram("octavo:e2e_request_latency_seconds", "End-to-end request latency.", LATENCY_BUCKETS)
        self.prompt_tokens = histogram("octavo:request_prompt_tokens", "Prompt tokens per request.", TOKEN_BUCKETS)
        self.generation_tokens = histogram(
            "octavo:request_generation_tokens", "Generated tokens per request.", TOKEN_BUCKETS
        )
        self.success = Counter(
            "octavo:request_success",
            "Finished requests, by finish reason.",
            labelnames=["model_name", "finished_reason"],
            registry=self.registry,
        )
        for reason in ("stop", "length", "abort"):
            self.success.labels(model_name, reason)  # export zeros before the first request
        self.rejected = Counter(
            "octavo:request_rejected",
            "Requests refused because the waiting queue was full (HTTP 503).",
            ["model_name"],
            registry=self.registry,
        ).labels(model_name)

    def on_request_finished(self, output: RequestOutput, timing: RequestTiming) -> None:
        reasons = [c.finish_reason for c in output.outputs if c.finish_reason]
        self.success.labels(self.model_name, reasons[0] if reasons else "abort").inc()
        if timing.first_token is not None:
            self.ttft.observe(timing.first_token - timing.arrival)
            if timing.num_output_tokens > 1 and timing.last_token is not None:
                self.tpot.observe((timing.last_token - timing.first_token) / (timing.num_output_tokens - 1))
            self.e2e.observe((timing.last_token or timing.first_token) - timing.arrival)
        self.prompt_tokens.observe(len(output.prompt_token_ids or ()))
        self.generation_tokens.observe(timing.num_output_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""Prometheus metrics for /metrics, named, labelled and bucketed as vLLM's.

Each metric is vLLM's name with the server's prefix (`--metrics-prefix`, default `octavo`;
`vllm` makes a dashboard built for vLLM read Octavo unchanged) and vLLM's labels `model_name`
and `engine` (always "0": one engine per server). Engine-wide numbers (queue sizes, KV usage,
token counters, preemptions, prefix-cache tokens) are read from the async engine's last stats
snapshot at scrape time, so they cost nothing on the hot path. Per-step numbers (tokens per
step) are observed after each step, per-request ones (TTFT, inter-token latency, queue / prefill
/ decode times, lengths, finish reasons) when a request finishes. Each server owns its own
registry, so several apps can live in one process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from octavo.async_engine import AsyncLLMEngine, EngineStatsSnapshot, RequestTiming
from octavo.outputs import RequestOutput

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_PREFIX = "octavo"
LABELS = ["model_name", "engine"]
ENGINE_INDEX = "0"

disable_created_metrics()  # no `_created` series: vLLM does not export them either

# vLLM's buckets (vllm/v1/metrics/loggers.py), so dashboards built for it read ours unchanged
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
TTFT_BUCKETS += [20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
TOKEN_LATENCY_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5]
TOKEN_LATENCY_BUCKETS += [10.0, 20.0, 40.0, 80.0]
REQUEST_LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0]
REQUEST_LATENCY_BUCKETS += [120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]
ITERATION_TOKEN_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
N_BUCKETS = [1, 2, 5, 10, 20]
FINISH_REASONS = ("stop", "length", "abort", "error")


def buckets_1_2_5(most: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to `most` (vLLM's buckets of token counts, up to max_model_len)."""
    out: list[int] = []
    scale = 1
    while True:
        for m in (1, 2, 5):
            if m * scale > most:
                return out
            out.append(m * scale)
        scale *= 10


def _token_times(output: RequestOutput, timing: RequestTiming) -> tuple[float, float, float] | None:
    """(arrival, first token, last token): the engine's own times, one per step whatever the
    request's output kind; else (an engine reporting none) those the async front saw; None if
    the request got no token."""
    m = output.metrics
    if m is not None and m.first_token_time is not None:
        return m.arrival_time, m.first_token_time, m.last_token_time or m.first_token_time
    if timing.first_token is not None and timing.last_token is not None:
        return timing.arrival, timing.first_token, timing.last_token
    return None


class _EngineCollector(Collector):
    """Gauges and counters taken from the engine's stats snapshot at each scrape."""

    def __init__(self, engine: AsyncLLMEngine, prefix: str, labels: list[str]) -> None:
        self.engine = engine
        self.prefix = prefix
        self.labels = labels

    def collect(self) -> Iterator[Any]:
        s = self.engine.stats

        def gauge(name: str, doc: str, v: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(f"{self.prefix}:{name}", doc, labels=LABELS)
            g.add_metric(self.labels, v)
            return g

        def counter(name: str, doc: str, v: float) -> CounterMetricFamily:
            c = CounterMetricFamily(f"{self.prefix}:{name}", doc, labels=LABELS)
            c.add_metric(self.labels, v)
            return c

        yield gauge("num_requests_running", "Number of requests in the running batch.", s.num_running)
        yield gauge("num_requests_waiting", "Number of requests waiting to be scheduled.", s.num_waiting)
        yield gauge("kv_cache_usage_perc", "KV-cache usage: 0 is empty, 1 is full.", s.kv_cache_usage)
        yield gauge(
            "kv_cache_slot_utilization",
            "Fraction of allocated KV slots that hold tokens (1 - internal fragmentation).",
            getattr(s, "kv_slot_utilization", 1.0),
        )
        yield gauge(
            "num_requests_running_max", "Most requests seen running in one step since start.", s.max_num_running_seen
        )
        yield counter("prompt_tokens", "Prompt tokens processed.", s.prompt_tokens_total)
        yield counter("generation_tokens", "Generated tokens.", s.generation_tokens_total)
        yield counter("num_preemptions", "Preemptions (a running request lost its KV blocks).", s.num_preemptions_total)
        yield counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", s.prefix_cache_queries)
        yield counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.", s.prefix_cache_hits)
        kv = getattr(s, "kv_transfer", None)
        if kv is not None:  # disaggregated prefill/decode (docs/disaggregation.md)
            sent = "Prompt tokens whose KV went to a decode instance (as of this instance's last step)."
            yield counter("kv_transfer_sent_tokens", sent, kv.sent_tokens)
            yield counter(
                "kv_transfer_received_tokens",
                "Prompt tokens whose KV came from the prefill instance (not computed here).",
                kv.received_tokens,
            )
            yield counter(
                "kv_transfer_failed_requests",
                "Requests whose KV transfer failed: they recomputed their prompt.",
                kv.failed_requests,
            )
        spec = getattr(s, "spec_decode", None)
        if spec is not None:  # speculative decoding is on
            drafts = "Drafts verified (one request's proposals in one step)."
            yield counter("spec_decode_num_drafts", drafts, spec.num_drafts)
            yield counter("spec_decode_num_draft_tokens", "Proposed tokens verified.", spec.num_draft_tokens)
            yield counter("spec_decode_num_accepted_tokens", "Proposed tokens accepted.", spec.num_accepted_tokens)
            per_pos = CounterMetricFamily(
                f"{self.prefix}:spec_decode_num_accepted_tokens_per_pos",
                "Accepted proposed tokens, by position in the draft.",
                labels=[*LABELS, "position"],
            )
            for pos, n in enumerate(spec.num_accepted_tokens_per_pos):
                per_pos.add_metric([*self.labels, str(pos)], n)
            yield per_pos


class ServerMetrics:
    """The server's registry; also the async engine's stat logger (on_step, on_request_finished)."""

    def __init__(
        self,
        engine: AsyncLLMEngine,
        model_name: str,
        prefix: str = DEFAULT_PREFIX,
        cache_info: Mapping[str, Any] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = [model_name, ENGINE_INDEX]
        self.registry.register(_EngineCollector(engine, prefix, labels))
        self.model_name = model_name
        self.labels = labels
        max_len = int(engine.model_config.max_model_len)

        def histogram(name: str, doc: str, buckets: Sequence[float]) -> Histogram:
            return Histogram(f"{prefix}:{name}", doc, LABELS, registry=self.registry, buckets=buckets).labels(*labels)

        self.ttft = histogram("time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS)
        self.itl = histogram(
            "inter_token_latency_seconds", "Time between consecutive outputs of a request.", TOKEN_LATENCY_BUCKETS
        )
        self.tpot = histogram(
            "time_per_output_token_seconds",
            "Mean time per output token after the first, per request (vLLM's older name of the next).",
            TOKEN_LATENCY_BUCKETS,
        )
        self.request_tpot = histogram(
            "request_time_per_output_token_seconds",
            "Mean time per output token after the first, per request.",
            TOKEN_LATENCY_BUCKETS,
        )
        self.e2e = histogram("e2e_request_latency_seconds", "End-to-end request latency.", REQUEST_LATENCY_BUCKETS)
        self.queue = histogram(
            "request_queue_time_seconds", "Time a request waited before its first step.", REQUEST_LATENCY_BUCKETS
        )
        self.inference = histogram(
            "request_inference_time_seconds",
            "Time from a request's first step to its last token.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.prefill = histogram(
            "request_prefill_time_seconds",
            "Time from a request's first step to its first token.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.decode = histogram(
            "request_decode_time_seconds", "Time from a request's first token to its last.", REQUEST_LATENCY_BUCKETS
        )
        counts = buckets_1_2_5(max_len)
        self.prompt_tokens = histogram("request_prompt_tokens", "Prompt tokens per request.", counts)
        self.generation_tokens = histogram("request_generation_tokens", "Generated tokens per request.", counts)
        self.max_generation_tokens = histogram(
            "request_max_num_generation_tokens", "Generated tokens of a request's longest sample.", counts
        )
        self.params_max_tokens = histogram("request_params_max_tokens", "The max_tokens of each request.", counts)
        self.params_n = histogram("request_params_n", "The n of each request.", N_BUCKETS)
        self.iteration_tokens = histogram("iteration_tokens_total", "Tokens per engine step.", ITERATION_TOKEN_BUCKETS)
        self.success = Counter(
            f"{prefix}:request_success",
            "Finished requests, by finish reason.",
            labelnames=[*LABELS, "finished_reason"],
            registry=self.registry,
        )
        for reason in FINISH_REASONS:
            self.success.labels(*labels, reason)  # export zeros before the first request
        self.rejected = Counter(
            f"{prefix}:request_rejected",
            "Requests refused because the waiting queue was full (HTTP 503).",
            LABELS,
            registry=self.registry,
        ).labels(*labels)
        if cache_info is not None:
            info = {k: str(v) for k, v in cache_info.items()}
            Gauge(
                f"{prefix}:cache_config_info",
                "Information of the engine's cache config.",
                [*info, "engine"],
                registry=self.registry,
            ).labels(*info.values(), ENGINE_INDEX).set(1)

    def on_step(self, stats: EngineStatsSnapshot) -> None:
        if stats.step_tokens:
            self.iteration_tokens.observe(stats.step_tokens)

    def on_request_finished(self, output: RequestOutput, timing: RequestTiming) -> None:
        reasons = [c.finish_reason for c in output.outputs if c.finish_reason]
        self.success.labels(*self.labels, reasons[0] if reasons else "abort").inc()
        self.e2e.observe(time.monotonic() - timing.arrival)
        m = output.metrics
        times = _token_times(output, timing)
        if m is not None and m.first_scheduled_time is not None:
            self.queue.observe(m.first_scheduled_time - m.arrival_time)
        if times is not None:
            arrival, first, last = times
            self.ttft.observe(first - arrival)
            self.decode.observe(last - first)
            if m is not None and m.first_scheduled_time is not None:
                self.prefill.observe(first - m.first_scheduled_time)
                self.inference.observe(last - m.first_scheduled_time)
            if timing.num_output_tokens > 1:
                per_token = (last - first) / (timing.num_output_tokens - 1)
                self.tpot.observe(per_token)
                self.request_tpot.observe(per_token)
        gaps = m.inter_token_latencies if m is not None else []
        for gap in gaps:
            self.itl.observe(gap)
        self.prompt_tokens.observe(len(output.prompt_token_ids or ()))
        self.generation_tokens.observe(timing.num_output_tokens)
        self.max_generation_tokens.observe(max(timing.sample_tokens, default=timing.num_output_tokens))
        self.params_n.observe(timing.n)
        if timing.max_tokens is not None:
            self.params_max_tokens.observe(timing.max_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)

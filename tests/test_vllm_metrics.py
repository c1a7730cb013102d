"""/metrics as a vLLM dashboard reads it: with --metrics-prefix vllm, every series and label its
Grafana dashboard queries is there, with vLLM's buckets, and the numbers add up."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from octavo.async_engine import AsyncLLMEngine
from octavo.engine import LLMEngine
from octavo.engine_args import EngineArgs
from octavo.entrypoints.openai.api_server import ServerSettings, build_app

# The series queried by vLLM's Grafana dashboard, examples/observability/prometheus_grafana/grafana.json
# (vllm-project/vllm at commit 4b5c627c23e6690b8987100d1cbf78e34ac14bf9), each with model_name="$model_name".
DASHBOARD_SERIES = [
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:e2e_request_latency_seconds_sum",
    "vllm:e2e_request_latency_seconds_count",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:inter_token_latency_seconds_bucket",
    "vllm:inter_token_latency_seconds_sum",
    "vllm:inter_token_latency_seconds_count",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:time_to_first_token_seconds_sum",
    "vllm:time_to_first_token_seconds_count",
    "vllm:kv_cache_usage_perc",
    "vllm:request_prompt_tokens_bucket",
    "vllm:request_generation_tokens_bucket",
    "vllm:request_success_total",  # summed by finished_reason
    "vllm:request_queue_time_seconds_sum",
    "vllm:request_prefill_time_seconds_sum",
    "vllm:request_decode_time_seconds_sum",
    "vllm:request_max_num_generation_tokens_sum",
]
# more of vLLM's series (vllm/v1/metrics/loggers.py) that issue 17 names
MORE_SERIES = [
    "vllm:iteration_tokens_total_bucket",
    "vllm:request_inference_time_seconds_sum",
    "vllm:cache_config_info",
]
# vLLM's buckets, from vllm/v1/metrics/loggers.py
VLLM_BUCKETS = {
    "vllm:time_to_first_token_seconds": [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0]
    + [2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0],
    "vllm:inter_token_latency_seconds": [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5]
    + [5.0, 7.5, 10.0, 20.0, 40.0, 80.0],
    "vllm:e2e_request_latency_seconds": [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0]
    + [50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0],
    "vllm:iteration_tokens_total": [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
    "vllm:request_prompt_tokens": [1, 2, 5, 10, 20, 50],  # 1-2-5 up to max_model_len (64)
}
NAME = "tiny"
MAX_TOKENS = 5


@pytest.fixture(scope="module")
def samples(tiny_model_dirs):
    """/metrics after three requests (streamed, n=2, plain) against the tiny llama, keyed by series."""
    args = EngineArgs(model=tiny_model_dirs["llama"], device="cpu", dtype="float32", max_model_len=64)
    args.kv_cache_memory = "16MiB"
    engine = AsyncLLMEngine(LLMEngine(args))
    app = build_app(engine, ServerSettings(served_model_names=[NAME], metrics_prefix="vllm"))
    body = {"model": NAME, "prompt": [5, 17, 300, 42], "max_tokens": MAX_TOKENS, "ignore_eos": True}

    async def main() -> str:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as client:
            try:
                for extra in ({"stream": True}, {"n": 2}, {}):
                    r = await client.post("/v1/completions", json={**body, **extra})
                    assert r.status_code == 200, r.text
                return (await client.get("/metrics")).text
            finally:
                await engine.shutdown()

    out: dict[str, list] = {}
    for family in text_string_to_metric_families(asyncio.run(main())):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


@pytest.mark.parametrize("series", DASHBOARD_SERIES + MORE_SERIES)
def test_every_dashboard_series_is_there_with_vllms_labels(samples, series):
    assert series in samples, f"{series} missing; have {sorted(samples)}"
    for s in samples[series]:
        assert s.labels.get("engine") == "0"
        if series != "vllm:cache_config_info":
            assert s.labels["model_name"] == NAME


@pytest.mark.parametrize("name", sorted(VLLM_BUCKETS))
def test_buckets_are_vllms(samples, name):
    bounds = [float(s.labels["le"]) for s in samples[f"{name}_bucket"] if s.labels["le"] != "+Inf"]
    assert bounds == [float(b) for b in VLLM_BUCKETS[name]]


def one(samples, series, **labels) -> float:
    (value,) = [s.value for s in samples[series] if all(s.labels.get(k) == v for k, v in labels.items())]
    return value


def test_the_numbers_add_up(samples):
    for series in ("e2e_request_latency_seconds", "time_to_first_token_seconds", "request_queue_time_seconds"):
        assert one(samples, f"vllm:{series}_count") == 3
    assert one(samples, "vllm:request_success_total", finished_reason="length") == 3
    assert one(samples, "vllm:generation_tokens_total") == 4 * MAX_TOKENS  # n=2 counts twice
    assert one(samples, "vllm:request_max_num_generation_tokens_sum") == 3 * MAX_TOKENS
    # each request's tokens after the first came in later steps, one gap each
    assert one(samples, "vllm:inter_token_latency_seconds_count") == 3 * (MAX_TOKENS - 1)
    assert one(samples, "vllm:iteration_tokens_total_count") >= MAX_TOKENS
    assert one(samples, "vllm:request_params_n_sum") == 4
    info = samples["vllm:cache_config_info"][0]
    assert info.value == 1 and info.labels["block_size"] == "16" and int(info.labels["num_gpu_blocks"]) > 0

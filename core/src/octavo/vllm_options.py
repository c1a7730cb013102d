"""vLLM's options that Octavo does not implement, so that vLLM's command lines and `LLM(...)`
calls work unchanged or fail with an error that names the option.

Octavo implements many of vLLM's options under vLLM's own names (`EngineArgs`, the server's
flags). The rest are listed here, each with vLLM's default:

- ACCEPTED options cannot change what the engine computes (logging, performance hints, knobs
  of machinery Octavo's device plugins own): they are taken and have no effect.
- REFUSED options would change the results, or promise a feature Octavo lacks: any value but
  vLLM's default is an `UnsupportedOptionError` naming the option and saying what it asks for.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class UnsupportedOptionError(ValueError):
    """A vLLM option Octavo does not implement, set to something but vLLM's default."""


@dataclass(frozen=True)
class Option:
    name: str  # the Python name (LLM keyword, EngineArgs field); the flag is --name-with-dashes
    default: Any  # vLLM's default: setting it asks for nothing
    why: str  # accepted: why it has no effect; refused: what it asks for that Octavo lacks
    kind: str = "value"  # "value" (one value), "json" (a JSON value), "flag" (no value), "list" (values)
    also: tuple[Any, ...] = ()  # more values that ask for nothing Octavo lacks
    alias: str | None = None  # vLLM's short flag

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


# ---- engine options (vLLM's EngineArgs and LLM keywords) -----------------------------------------
ENGINE_ACCEPTED = [
    Option("disable_log_stats", False, "Octavo logs no periodic statistics", "flag"),
    Option("swap_space", 4, "preempted requests recompute their KV cache; nothing is swapped"),
    Option("max_parallel_loading_workers", None, "weights load one shard at a time"),
    Option("disable_custom_all_reduce", False, "the device plugin owns its collectives", "flag"),
    Option("max_seq_len_to_capture", 8192, "the device plugin picks its graph sizes"),
    Option("compilation_config", None, "the device plugin owns compilation", "json", alias="-O"),
    Option("disable_async_output_proc", False, "outputs are always processed while the next step runs", "flag"),
    Option("disable_cascade_attn", False, "the device plugin owns its attention kernels", "flag"),
    Option("attention_backend", None, "the device plugin picks its attention kernels"),
    Option("prefix_caching_hash_algo", "sha256", "prefix-cache keys are internal"),
    Option("use_tqdm_on_load", True, "weights load without a progress bar", "flag"),
    Option("enable_chunked_prefill", None, "the device plugin decides; it does not change outputs", "flag"),
    Option("max_num_partial_prefills", 1, "a scheduling hint; outputs do not change"),
    Option("max_long_partial_prefills", 1, "a scheduling hint; outputs do not change"),
    Option("long_prefill_token_threshold", 0, "a scheduling hint; outputs do not change"),
    Option("num_scheduler_steps", 1, "a scheduling hint; outputs do not change"),
    Option("use_v2_block_manager", True, "deprecated in vLLM, no effect there either", "flag"),
    Option("guided_decoding_backend", "auto", "structured outputs always run on xgrammar"),
    Option("structured_outputs_config", None, "structured outputs always run on xgrammar", "json"),
    Option("logits_processor_pattern", None, "a request asking for logits processors is refused by name"),
    Option("allowed_local_media_path", "", "a request with media is refused by name"),
    Option("show_hidden_metrics_for_version", None, "deprecated metrics are not exported"),
]
# keywords of vLLM's LLM and AsyncEngineArgs that are server flags on Octavo's command line
LLM_ACCEPTED = [
    Option("served_model_name", None, "the offline engine has no served name", "list"),
    Option("enable_log_requests", False, "the offline engine logs no requests", "flag"),
    Option("disable_log_requests", True, "the offline engine logs no requests", "flag"),
]

ENGINE_REFUSED = [
    Option("kv_cache_dtype", "auto", "a KV cache in another dtype than the model's"),
    Option("kv_cache_memory_bytes", None, "a KV cache size in bytes on GPUs; use --gpu-memory-utilization"),
    Option("data_parallel_rank", None, "data parallelism"),
    Option("data_parallel_size_local", None, "data parallelism"),
    Option("data_parallel_address", None, "data parallelism"),
    Option("data_parallel_rpc_port", None, "data parallelism"),
    Option("data_parallel_backend", "mp", "data parallelism"),
    Option("cpu_offload_gb", 0, "weights offloaded to CPU memory"),
    Option("rope_scaling", None, "a RoPE scaling other than the model's", "json"),
    Option("rope_theta", None, "a RoPE base other than the model's"),
    Option("hf_config_path", None, "a config from another place than the model's"),
    Option("code_revision", None, "remote modelling code, which Octavo does not run"),
    Option("tokenizer_mode", "auto", "a slow or mistral_common tokenizer", also=("hf",)),
    Option("config_format", "auto", "a config in another format than Hugging Face's", also=("hf",)),
    Option("skip_tokenizer_init", False, "token-id-only serving without a tokenizer", "flag"),
    Option("disable_sliding_window", False, "full attention in place of the model's sliding window", "flag"),
    Option("enable_sleep_mode", False, "sleep mode", "flag"),
    Option("model_impl", "auto", "transformers' modelling code", also=("vllm",)),
    Option("task", "auto", "tasks other than text generation", also=("generate",)),
    Option("runner", "auto", "tasks other than text generation and pooling", also=("generate", "pooling")),
    Option("convert", "auto", "conversions other than to an embedder", also=("none", "embed", "classify")),
    Option("mm_processor_kwargs", None, "multimodal inputs", "json"),
    Option("worker_cls", "auto", "custom worker classes"),
    Option("worker_extension_cls", "", "custom worker classes"),
    Option("enable_prompt_embeds", False, "prompt embeddings as input", "flag"),
    Option("logprobs_mode", "raw_logprobs", "logprobs of processed logits"),
    Option("scheduling_policy", "fcfs", "priority scheduling"),
    Option("preemption_mode", None, "swapping preempted requests out", also=("recompute",)),
    Option("calculate_kv_scales", False, "fp8 KV-cache scales", "flag"),
    Option("model_loader_extra_config", None, "loader plugins", "json"),
    Option("override_pooler_config", None, "pooling models", "json"),
    Option("otlp_traces_endpoint", None, "OpenTelemetry tracing"),
    Option("collect_detailed_traces", None, "OpenTelemetry tracing"),
    Option("additional_config", None, "platform-specific extra configuration", "json"),
    Option("logits_processors", None, "custom logits processors", "list"),
]

# ---- server options (vLLM's `vllm serve` frontend) -------------------------------------------
SERVER_ACCEPTED = [
    Option("disable_frontend_multiprocessing", False, "the server and the engine share one process", "flag"),
    Option("log_error_stack", False, "errors are logged with their stack anyway", "flag"),
]

SERVER_REFUSED = [
    Option("uds", None, "a Unix domain socket; use --host/--port"),
    Option(
        "chat_template_content_format", "auto", "message contents passed to the template as lists", also=("string",)
    ),
    Option("response_role", "assistant", "another role for the model's messages"),
    Option("return_tokens_as_token_ids", False, "token ids in place of token strings in logprobs", "flag"),
    Option("tool_parser_plugin", "", "tool calling"),
    Option("enable_request_id_headers", False, "X-Request-Id response headers", "flag"),
    Option("enable_prompt_tokens_details", False, "prompt token details in usage", "flag"),
    Option("enable_force_include_usage", False, "usage in every response", "flag"),
    Option("enable_server_load_tracking", False, "server load tracking", "flag"),
    Option("enable_tokenizer_info_endpoint", False, "the /tokenizer_info route", "flag"),
    Option("middleware", None, "custom ASGI middleware", "list"),
    Option("log_config_file", None, "a logging configuration file"),
    Option("headless", False, "an engine without an API server", "flag"),
    Option("config", None, "options read from a YAML file; pass them on the command line"),
]

ENGINE_OPTIONS = {o.name: o for o in ENGINE_ACCEPTED + ENGINE_REFUSED}
SERVER_OPTIONS = {o.name: o for o in SERVER_ACCEPTED + SERVER_REFUSED}
LLM_OPTIONS = {**ENGINE_OPTIONS, **{o.name: o for o in LLM_ACCEPTED}}
_ACCEPTED = {o.name for o in ENGINE_ACCEPTED + SERVER_ACCEPTED + LLM_ACCEPTED}


def add_to_parser(parser: argparse.ArgumentParser, options: Mapping[str, Option], title: str) -> None:
    """Parse `options` under vLLM's flag names; each one's value is None unless given."""
    g = parser.add_argument_group(title, "vLLM's options: accepted where they cannot change results, else refused")
    for o in options.values():
        names = [o.flag] + ([o.alias] if o.alias else [])
        help_ = f"{'no effect' if o.name in _ACCEPTED else 'not implemented'}: {o.why}"
        if o.kind == "flag":
            g.add_argument(*names, dest=o.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif o.kind == "json":
            g.add_argument(*names, dest=o.name, type=_json_or_text, default=None, metavar="JSON", help=help_)
        elif o.kind == "list":
            g.add_argument(*names, dest=o.name, nargs="*", default=None, help=help_)
        else:
            g.add_argument(*names, dest=o.name, type=_number_or_text, default=None, help=help_)


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value  # vLLM also takes `key=value` forms here; any value asks for the feature


def _number_or_text(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def check(values: Mapping[str, Any], options: Mapping[str, Option]) -> None:
    """Raise UnsupportedOptionError for the first refused option set to something but vLLM's default
    (None means "not given")."""
    for name, value in values.items():
        o = options.get(name)
        if o is None or value is None or o.name in _ACCEPTED:
            continue
        if value == o.default or value in o.also or (o.kind == "list" and not value):
            continue
        raise UnsupportedOptionError(
            f"Octavo does not implement vLLM's option {o.flag} / {o.name}= (given {value!r}): it asks for "
            f"{o.why}. Leave it out, or set it to vLLM's default ({o.default!r})"
        )


def split_engine_kwargs(kwargs: Mapping[str, Any], fields: set[str]) -> dict[str, Any]:
    """`LLM(**kwargs)`: the keywords EngineArgs takes; vLLM's other keywords are checked (refused
    ones raise) and dropped; a keyword neither knows is a TypeError listing the valid ones."""
    unknown = sorted(set(kwargs) - fields - set(LLM_OPTIONS))
    if unknown:
        raise TypeError(f"unknown LLM arguments {unknown}; valid: {sorted(fields - {'model'})}")
    check({k: v for k, v in kwargs.items() if k in LLM_OPTIONS}, LLM_OPTIONS)
    return {k: v for k, v in kwargs.items() if k in fields}

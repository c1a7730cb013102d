"""Engine options, defined once for the LLM class, the CLI and the server, under vLLM's names.

vLLM's options Octavo does not implement are listed in `octavo.vllm_options`: parsed here too,
accepted where they cannot change results, refused by name otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from typing import Any, TypeVar

from octavo import vllm_options
from octavo.sampling_params import MAX_LOGPROBS

DTYPES = ["auto", "half", "float16", "bfloat16", "float", "float32"]
LOAD_FORMATS = ["auto", "safetensors", "pt", "gguf", "dummy"]
_Args = TypeVar("_Args", bound="EngineArgs")


@dataclass
class EngineArgs:
    model: str = "smollm2"
    device: str = "auto"
    dtype: str = "auto"
    # the checkpoint's quantization format, to require it (None: whatever the checkpoint holds)
    quantization: str | None = None
    tokenizer: str | None = None
    # hub models: a branch, tag or commit of the model (and of a separate tokenizer)
    revision: str | None = None
    tokenizer_revision: str | None = None
    download_dir: str | None = None  # the Hugging Face cache to use (default: HF_HOME's)
    hf_token: str | bool | None = None  # None: HF_TOKEN or the stored login
    trust_remote_code: bool = False
    max_model_len: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None  # None: the platform's default
    block_size: int = 16
    kv_cache_memory: int | str = "4GiB"
    gpu_memory_utilization: float = 0.9
    num_gpu_blocks_override: int | None = None
    enable_prefix_caching: bool = True
    load_format: str = "auto"
    seed: int | None = 0
    tensor_parallel_size: int = 1
    # MoE models: shard the experts over the tensor-parallel ranks, tokens dispatched by all_to_all
    enable_expert_parallel: bool = False
    # layers split over this many stages of tensor_parallel_size ranks each (octavo.pipeline)
    pipeline_parallel_size: int = 1
    # "mp": worker processes on this host; "ray": Ray actors on a Ray cluster (None: "mp")
    distributed_executor_backend: str | None = None
    # engine cores behind one server, each with its own KV cache (octavo serve; the offline LLM is one)
    data_parallel_size: int = 1
    enforce_eager: bool = False
    async_scheduling: bool | None = None  # None: the platform's default (on for GPUs)
    max_logprobs: int = MAX_LOGPROBS
    # "auto": the model's generation_config.json sets request defaults; "vllm": Octavo's; or a folder
    generation_config: str = "auto"
    override_generation_config: dict[str, Any] | None = None
    # fields set over the checkpoint's config.json, e.g. a causal LM served as a reranker:
    # {"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["no", "yes"]}
    hf_overrides: dict[str, Any] | None = None
    # reasoning models: the parser of their thinking (deepseek_r1, qwen3); grammars start after it
    reasoning_parser: str | None = None
    # vision-language models: the most items of each modality per prompt, e.g. {"image": 2}
    limit_mm_per_prompt: dict[str, int] | None = None
    # LoRA adapters (docs/lora.md): device slots, the largest rank, adapters kept in host memory
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None
    # speculative decoding (vLLM's keys): {"method": "ngram", "num_speculative_tokens": k, ...}
    speculative_config: dict[str, Any] | str | None = None
    # disaggregated prefill/decode (vLLM's JSON): {"kv_connector": "OctavoTcpConnector", "kv_role": ...}
    kv_transfer_config: dict[str, Any] | str | None = None

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser, model_positional: bool = False) -> argparse.ArgumentParser:
        d = EngineArgs()
        model_help = "model directory, .gguf file, Hugging Face hub ID (org/name[:GGUF quant]), or 'smollm2'"
        if model_positional:  # `serve MODEL` as vLLM's, and `--model MODEL` too
            parser.add_argument("model_tag", nargs="?", default=None, metavar="MODEL", help=model_help)
            parser.add_argument("--model", default=None, help=f"{model_help} (default {d.model})")
        else:
            parser.add_argument("--model", default=d.model, help=model_help)
        parser.add_argument("--device", default=d.device, help="platform name (cpu, cuda, ...) or 'auto'")
        parser.add_argument("--dtype", default=d.dtype, choices=DTYPES, help="half = float16, float = float32")
        parser.add_argument(
            "--quantization",
            "-q",
            default=d.quantization,
            help="serve a checkpoint of this quantization format (gguf, gptq, awq, compressed-tensors, fp8), and "
            "keep a GGUF's layers quantized even without the device's kernels; default: the checkpoint's own "
            "(a GGUF file's layers stay quantized where the device has kernels for them, unless --dtype is given)",
        )
        parser.add_argument(
            "--tokenizer", default=d.tokenizer, help="tokenizer directory or hub ID (default: the model's)"
        )
        hub = parser.add_argument_group("Hugging Face hub")
        hub.add_argument("--revision", default=None, help="branch, tag or commit of a hub model (default: main)")
        hub.add_argument("--tokenizer-revision", default=None, help="branch, tag or commit of a hub --tokenizer")
        hub.add_argument("--download-dir", default=None, help="the Hugging Face cache to read and download into")
        hub.add_argument(
            "--hf-token",
            nargs="?",
            const=True,
            default=None,
            help="token for private or gated models (default: HF_TOKEN or the stored login)",
        )
        hub.add_argument(
            "--trust-remote-code",
            action="store_true",
            help="allow the config and tokenizer classes a checkpoint ships as Python code",
        )
        parser.add_argument("--max-model-len", type=int, default=d.max_model_len)
        parser.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs)
        parser.add_argument(
            "--max-num-batched-tokens",
            type=int,
            default=d.max_num_batched_tokens,
            help="tokens per step (prefill chunks + decodes); default: the device's (1024 on CPUs, 8192 on GPUs)",
        )
        parser.add_argument("--block-size", type=int, default=d.block_size)
        parser.add_argument(
            "--kv-cache-memory", default=d.kv_cache_memory, help="KV cache size on CPU-like devices, e.g. 4GiB"
        )
        parser.add_argument("--gpu-memory-utilization", type=float, default=d.gpu_memory_utilization)
        parser.add_argument("--num-gpu-blocks-override", type=int, default=None)
        parser.add_argument(
            "--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=d.enable_prefix_caching
        )
        parser.add_argument(
            "--load-format",
            default=d.load_format,
            choices=LOAD_FORMATS,
            help="auto / safetensors / gguf: the checkpoint's safe formats; pt: ALSO LOAD PICKLED .bin/.pt "
            "weights (a pickle can run code when loaded: only for checkpoints you trust); dummy: random weights",
        )
        parser.add_argument("--seed", type=int, default=d.seed)
        parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=d.tensor_parallel_size)
        parser.add_argument(
            "--enable-expert-parallel",
            action="store_true",
            help="MoE models: give each tensor-parallel rank whole experts (tokens go to them by all-to-all) "
            "instead of a slice of every expert; attention stays tensor parallel",
        )
        parser.add_argument(
            "--pipeline-parallel-size",
            "-pp",
            type=int,
            default=d.pipeline_parallel_size,
            help="split the layers over this many stages, each of --tensor-parallel-size ranks",
        )
        parser.add_argument(
            "--distributed-executor-backend",
            default=d.distributed_executor_backend,
            choices=["mp", "ray"],
            help="how the ranks start: mp = processes on this host (the default); ray = Ray actors placed on "
            "the Ray cluster (RAY_ADDRESS, or one started on this node; else a local instance)",
        )
        parser.add_argument(
            "--data-parallel-size",
            "-dp",
            type=int,
            default=d.data_parallel_size,
            help="serve with this many engine core processes, each with its own copy of the model and KV cache "
            "(and --tensor-parallel-size ranks), requests balanced by load",
        )
        parser.add_argument("--enforce-eager", action="store_true")
        parser.add_argument(
            "--async-scheduling",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="schedule the next step while the device runs this one (default: on "
            "for devices that queue work, such as GPUs; off on CPUs)",
        )
        parser.add_argument(
            "--max-logprobs",
            type=int,
            default=d.max_logprobs,
            help=f"the most logprobs / prompt_logprobs a request may ask for (at most {MAX_LOGPROBS})",
        )
        parser.add_argument(
            "--generation-config",
            default=d.generation_config,
            help="'auto': the model's generation_config.json sets the defaults of requests (sampling, "
            "max_new_tokens) and its EOS ids stop generation; 'vllm': keep Octavo's defaults (EOS ids still "
            "apply); or a folder holding a generation_config.json",
        )
        parser.add_argument(
            "--override-generation-config",
            type=json.loads,
            default=None,
            metavar="JSON",
            help="generation config fields set over --generation-config, e.g. '{\"temperature\": 0.5}'",
        )
        parser.add_argument(
            "--hf-overrides",
            "--hf_overrides",  # the spelling of vLLM's docs and model cards for Qwen3-Reranker
            type=json.loads,
            default=None,
            metavar="JSON",
            help="fields set over the model's config.json, e.g. '{\"architectures\": "
            '["Qwen3ForSequenceClassification"], "classifier_from_token": ["no", "yes"]}\' (Qwen3-Reranker)',
        )
        from octavo.reasoning import REASONING_PARSERS

        parser.add_argument(
            "--reasoning-parser",
            default=None,
            choices=sorted(REASONING_PARSERS),
            help="the model thinks in <think>...</think>: its thinking goes to reasoning_content, and "
            "structured outputs start after it",
        )
        parser.add_argument(
            "--speculative-config",
            default=None,
            metavar="JSON",
            help='speculative decoding, e.g. \'{"method": "ngram", "num_speculative_tokens": 4, '
            '"prompt_lookup_max": 5, "prompt_lookup_min": 2}\' (docs/speculative-decoding.md)',
        )
        parser.add_argument(
            "--kv-transfer-config",
            default=None,
            metavar="JSON",
            help='disaggregated prefill/decode, e.g. \'{"kv_connector": "OctavoTcpConnector", "kv_role": '
            '"kv_producer", "kv_port": 14579}\' (docs/disaggregation.md)',
        )
        lora = parser.add_argument_group("LoRA adapters (docs/lora.md)")
        lora.add_argument("--enable-lora", action="store_true", help="serve LoRA adapters of the model (PEFT format)")
        lora.add_argument(
            "--max-loras", type=int, default=d.max_loras, help="adapters on the device at once (one step's most)"
        )
        lora.add_argument("--max-lora-rank", type=int, default=d.max_lora_rank, help="the largest adapter rank served")
        lora.add_argument(
            "--max-cpu-loras",
            type=int,
            default=None,
            help="adapters kept loaded in host memory, least recently used dropped first (default: --max-loras)",
        )
        parser.add_argument(
            "--limit-mm-per-prompt",
            type=json.loads,
            default=None,
            metavar="JSON",
            help='vision-language models: the most images / videos per prompt, e.g. \'{"image": 2, "video": 1}\' '
            "(default 16 each)",
        )
        vllm_options.add_to_parser(parser, vllm_options.ENGINE_OPTIONS, "engine options of vLLM")
        return parser

    @classmethod
    def from_cli_args(cls: type[_Args], args: argparse.Namespace) -> _Args:
        """The options parsed by `add_cli_args`; vLLM options Octavo refuses raise here."""
        values = vars(args)
        vllm_options.check(values, vllm_options.ENGINE_OPTIONS)
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in names}
        if "model_tag" in values:  # `serve MODEL` and `serve --model MODEL`: one of them, or both alike
            tag, flag = values["model_tag"], values.get("model")
            if tag is not None and flag is not None and tag != flag:
                raise ValueError(f"two models given: {tag!r} and --model {flag!r}; give one")
            kwargs["model"] = tag or flag or cls.model
        return cls(**kwargs)

    def create_config(self):
        from octavo.engine_config import create_engine_config

        return create_engine_config(self)


@dataclass
class AsyncEngineArgs(EngineArgs):
    """vLLM's `AsyncEngineArgs`: the engine's options plus logging of each request."""

    enable_log_requests: bool = False
    max_log_len: int | None = None  # characters (or token ids) of a prompt logged; None: all

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser, model_positional: bool = False) -> argparse.ArgumentParser:
        EngineArgs.add_cli_args(parser, model_positional)
        parser.add_argument(
            "--enable-log-requests",
            action=argparse.BooleanOptionalAction,
            default=False,
            help="log each request: its id, prompt and sampling parameters",
        )
        parser.add_argument(
            "--disable-log-requests",
            dest="enable_log_requests",
            action="store_false",
            help="log no requests (the default; vLLM's older flag)",
        )
        parser.add_argument("--max-log-len", type=int, default=None, help="log at most this much of each prompt")
        return parser

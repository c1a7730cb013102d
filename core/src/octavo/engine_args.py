"""Engine options, defined once for the LLM class, the CLI and the server."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass


@dataclass
class EngineArgs:
    model: str = "smollm2"
    device: str = "auto"
    dtype: str = "auto"
    tokenizer: str | None = None
    max_model_len: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None  # None: the platform's default
    block_size: int = 16
    kv_cache_memory: int | str = "4GiB"
    gpu_memory_utilization: float = 0.9
    num_gpu_blocks_override: int | None = None
    enable_prefix_caching: bool = True
    load_format: str = "auto"
    seed: int = 0
    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    async_scheduling: bool | None = None  # None: the platform's default (on for GPUs)

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser, model_positional: bool = False) -> argparse.ArgumentParser:
        d = EngineArgs()
        if model_positional:
            parser.add_argument("model", nargs="?", default=d.model, help="model directory, .gguf file, or 'smollm2'")
        else:
            parser.add_argument("--model", default=d.model, help="model directory, .gguf file, or 'smollm2'")
        parser.add_argument("--device", default=d.device, help="platform name (cpu, cuda, ...) or 'auto'")
        parser.add_argument("--dtype", default=d.dtype, choices=["auto", "float32", "bfloat16", "float16"])
        parser.add_argument("--tokenizer", default=d.tokenizer, help="tokenizer directory (default: the model's)")
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
        parser.add_argument("--load-format", default=d.load_format, choices=["auto", "dummy"])
        parser.add_argument("--seed", type=int, default=d.seed)
        parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=d.tensor_parallel_size)
        parser.add_argument("--enforce-eager", action="store_true")
        parser.add_argument(
            "--async-scheduling",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="schedule the next step while the device runs this one (default: on "
            "for devices that queue work, such as GPUs; off on CPUs)",
        )
        return parser

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> EngineArgs:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    def create_config(self):
        from octavo.engine_config import create_engine_config

        return create_engine_config(self)

"""Engine configuration: dataclasses, validated once in `EngineArgs.create_config()`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from octavo.loader.generation_config import GenerationDefaults
from octavo.quantization.checkpoint import QuantConfig
from octavo.sampling_params import MAX_LOGPROBS

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype | None:
    """None for "auto"."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(sorted(_DTYPES))}") from None


def parse_size(value: int | str) -> int:
    """Bytes from 4294967296, "4GiB", "512MiB", "4GB", "4G"."""
    if isinstance(value, (int, float)):
        return int(value)
    s = value.strip().lower().replace(" ", "")
    units = {
        "kib": 2**10,
        "mib": 2**20,
        "gib": 2**30,
        "tib": 2**40,
        "kb": 10**3,
        "mb": 10**6,
        "gb": 10**9,
        "tb": 10**12,
        "k": 2**10,
        "m": 2**20,
        "g": 2**30,
        "t": 2**40,
        "b": 1,
    }
    for unit in sorted(units, key=len, reverse=True):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * units[unit])
    return int(float(s))


@dataclass
class ModelConfig:
    model: str
    hf_config: Any  # transformers.PretrainedConfig
    dtype: torch.dtype
    max_model_len: int
    load_format: str
    weights_path: str | None  # file (GGUF) or directory (HF) the weights come from
    tokenizer: str | None
    seed: int = 0
    max_logprobs: int = MAX_LOGPROBS  # the most logprobs / prompt_logprobs a request may ask for
    # the model's generation_config.json: request defaults and extra EOS ids (--generation-config)
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)
    # the checkpoint's quantized layers and their schemes (None: dense weights)
    quantization: QuantConfig | None = None
    # vision-language models: the most items of each modality per prompt (octavo.multimodal)
    limit_mm_per_prompt: dict[str, int] | None = None


@dataclass
class CacheConfig:
    block_size: int = 16
    kv_cache_memory: int = 4 * 2**30
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    num_blocks: int | None = None  # override the computed count (tests, benchmarks)


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    # schedule and launch step N+1 while step N runs (see LLMEngine.step)
    async_scheduling: bool = False
    # the platform's SchedulingPolicy: split long prompts over steps; mix prefills and decodes
    chunked_prefill: bool = True
    mixed_steps: bool = True


@dataclass
class ParallelConfig:
    tensor_parallel_size: int = 1
    # layers split into this many stages, each with its own tensor-parallel group (octavo.pipeline)
    pipeline_parallel_size: int = 1
    # how the worker processes start: "mp" (torch.multiprocessing on this host) or "ray"
    distributed_executor_backend: str = "mp"
    # this process's rank in the run (0: the engine's own process, which drives the others)
    rank: int = 0
    # MoE layers: whole experts sharded over the ranks (octavo.layers.moe), not each expert's features
    enable_expert_parallel: bool = False

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


@dataclass
class EngineConfig:
    model: ModelConfig
    cache: CacheConfig
    scheduler: SchedulerConfig
    parallel: ParallelConfig
    device: str
    enforce_eager: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # octavo.lora.LoRAConfig, or None: LoRA adapters not enabled
    lora: Any = None
    # octavo.spec_decode.SpeculativeConfig, or None: no speculative decoding
    speculative: Any = None

    def replace(self, **kw: Any) -> EngineConfig:
        return dataclasses.replace(self, **kw)

"""Turn EngineArgs into a validated EngineConfig, a chosen platform and a model source."""

from __future__ import annotations

import logging

import torch

from octavo.config import (
    CacheConfig,
    EngineConfig,
    ModelConfig,
    ParallelConfig,
    SchedulerConfig,
    parse_dtype,
    parse_size,
)
from octavo.layers.attention import shard_heads
from octavo.loader.source import ModelSource, load_hf_config, resolve_model_source
from octavo.platform import Platform, resolve_platform

logger = logging.getLogger("octavo")


def _checkpoint_dtype(hf_config) -> torch.dtype | None:
    d = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
    if isinstance(d, str):
        return parse_dtype(d) if d != "auto" else None
    return d if isinstance(d, torch.dtype) else None


def _check_tensor_parallel(tp: int, hf_config, platform: Platform) -> None:
    """Refuse, before any worker starts, a tensor-parallel size the model or host cannot take."""
    if tp < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {tp}")
    if tp == 1:
        return
    heads = hf_config.num_attention_heads
    shard_heads(heads, getattr(hf_config, "num_key_value_heads", None) or heads, tp, 0)
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_backend_available(platform.dist_backend):
        raise ValueError(
            f"tensor_parallel_size={tp} needs torch.distributed with the {platform.dist_backend!r} "
            f"backend (device {platform.name!r}), which this torch build lacks; use "
            "tensor_parallel_size=1"
        )


def create_engine_config(args) -> tuple[EngineConfig, Platform, ModelSource]:
    platform = resolve_platform(args.device)
    source = resolve_model_source(args.model)
    if args.load_format not in ("auto", "dummy"):
        raise ValueError(f"unknown load_format {args.load_format!r}; choose auto or dummy")
    hf_config = load_hf_config(source)

    dtype = parse_dtype(args.dtype)
    if dtype is None:
        # a GGUF's quantized weights have no dtype of their own: let the platform pick
        dtype = platform.default_dtype(None if source.is_gguf else _checkpoint_dtype(hf_config))
    if dtype not in platform.supported_dtypes:
        raise ValueError(
            f"dtype {dtype} is not supported on device {platform.name!r}; "
            f"supported: {[str(d).replace('torch.', '') for d in platform.supported_dtypes]}"
        )

    limit = getattr(hf_config, "max_position_embeddings", None) or 2048
    max_model_len = args.max_model_len or limit
    if max_model_len > limit:
        raise ValueError(f"max_model_len={max_model_len} exceeds the model's max_position_embeddings ({limit})")
    if args.block_size < 1 or args.block_size & (args.block_size - 1):
        raise ValueError(f"block_size must be a power of two, got {args.block_size}")
    batched_tokens = args.max_num_batched_tokens or platform.default_max_num_batched_tokens
    if args.max_num_seqs < 1 or batched_tokens < 1:
        raise ValueError("max_num_seqs and max_num_batched_tokens must be >= 1")
    _check_tensor_parallel(args.tensor_parallel_size, hf_config, platform)
    err = platform.attention.check_config(
        head_dim=getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads,
        block_size=args.block_size,
        dtype=dtype,
    )
    if err:
        raise ValueError(f"device {platform.name!r} cannot run this model: {err}")

    config = EngineConfig(
        model=ModelConfig(
            model=args.model,
            hf_config=hf_config,
            dtype=dtype,
            max_model_len=max_model_len,
            load_format=args.load_format,
            weights_path=source.weights_path,
            tokenizer=args.tokenizer,
            seed=args.seed,
        ),
        cache=CacheConfig(
            block_size=args.block_size,
            kv_cache_memory=parse_size(args.kv_cache_memory),
            gpu_memory_utilization=args.gpu_memory_utilization,
            enable_prefix_caching=args.enable_prefix_caching,
            num_blocks=args.num_gpu_blocks_override,
        ),
        scheduler=SchedulerConfig(
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=batched_tokens,
            async_scheduling=platform.async_scheduling if args.async_scheduling is None else args.async_scheduling,
        ),
        parallel=ParallelConfig(tensor_parallel_size=args.tensor_parallel_size),
        device=platform.name,
        enforce_eager=args.enforce_eager,
    )
    platform.check_and_update_config(config)
    return config, platform, source

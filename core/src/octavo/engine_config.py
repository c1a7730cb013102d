"""Turn EngineArgs into a validated EngineConfig, a chosen platform and a model source."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

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
from octavo.engine_args import LOAD_FORMATS
from octavo.layers.attention import shard_heads
from octavo.loader.generation_config import load_generation_defaults
from octavo.loader.source import (
    ModelSource,
    check_architecture,
    load_hf_config,
    load_tokenizer,
    resolve_model_source,
)
from octavo.platform import AttentionSpec, Platform, resolve_platform
from octavo.quantization.checkpoint import read_quantization
from octavo.sampling_params import MAX_LOGPROBS

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
    if platform.spmd:
        return  # the platform's runner runs the ranks itself
    _check_workers("tensor_parallel_size", tp, platform)


def _check_workers(option: str, size: int, platform: Platform) -> None:
    """Refuse a run of several worker processes (`option`=`size` asks for it) where core cannot start them."""
    from octavo.model_runner import ModelRunner

    if platform.runner_cls is not None and not issubclass(platform.runner_cls, ModelRunner):
        raise ValueError(
            f"device {platform.name!r} runs steps with its own runner ({platform.runner_cls.__name__}), which "
            f"neither derives from core's ModelRunner (worker processes) nor declares spmd; use {option}=1"
        )
    import torch.distributed as dist

    backend = platform.device.dist_backend
    if not dist.is_available() or not dist.is_backend_available(backend):
        raise ValueError(
            f"{option}={size} needs torch.distributed with the {backend!r} backend (device {platform.name!r}), "
            f"which this torch build lacks; use {option}=1"
        )


def _parallel_config(args, hf_config, platform: Platform) -> ParallelConfig:
    """The run's ranks (tensor parallelism is checked by `_check_tensor_parallel`): pipeline
    stages only where each gets a layer, for the dense decoders' generation, on core's runner."""
    pp, tp = args.pipeline_parallel_size, args.tensor_parallel_size
    backend = args.distributed_executor_backend or "mp"
    if backend not in ("mp", "ray"):
        raise ValueError(f"unknown distributed_executor_backend {backend!r}; choose mp or ray")
    if pp < 1:
        raise ValueError(f"pipeline_parallel_size must be >= 1, got {pp}")
    if pp > 1:
        from octavo.models import get_model_class
        from octavo.models.llama import LlamaForCausalLM

        archs = getattr(hf_config, "architectures", None) or [getattr(hf_config, "model_type", "?")]
        cls = get_model_class(hf_config)
        if not (issubclass(cls, LlamaForCausalLM) and archs[0].endswith("ForCausalLM")):
            raise ValueError(
                f"pipeline parallelism runs the generating decoders built on core's Llama family, not {archs[0]}; "
                "use pipeline_parallel_size=1"
            )
        layers = hf_config.num_hidden_layers
        if pp > layers:
            raise ValueError(
                f"pipeline_parallel_size={pp} exceeds the model's {layers} layers (each stage needs one); "
                f"use at most {layers}"
            )
        unsupported = [
            ("enable_lora", args.enable_lora),
            ("speculative_config", args.speculative_config),
            (f"device {platform.name!r}, whose runner runs every rank in one process (SPMD)", platform.spmd),
            (f"device {platform.name!r}, which compiles its steps (static shapes)", platform.scheduling.static_shapes),
        ]
        for what, asked in unsupported:
            if asked:
                raise ValueError(f"pipeline parallelism does not support {what} yet; use pipeline_parallel_size=1")
        if tp == 1:  # the worker checks `_check_tensor_parallel` runs for tp > 1
            _check_workers("pipeline_parallel_size", pp, platform)
    if backend == "ray" and tp * pp > 1:
        from importlib.util import find_spec

        if find_spec("ray") is None:
            raise ValueError("distributed_executor_backend='ray' needs Ray: pip install 'octavo[ray]'")
    return ParallelConfig(tp, pp, backend)


def _expert_parallel(args, hf_config) -> bool:
    """--enable-expert-parallel, checked before anything loads: a model with experts (its class takes
    the switch), a tensor-parallel size that divides the expert count."""
    if not args.enable_expert_parallel:
        return False
    import inspect

    from octavo.models import get_model_class

    cls = get_model_class(hf_config)
    if "enable_expert_parallel" not in inspect.signature(cls).parameters:
        raise ValueError(
            f"--enable-expert-parallel shards the experts of mixture-of-experts models; {cls.__name__} has none: "
            "leave it out"
        )
    experts = getattr(hf_config, "num_local_experts", None) or getattr(hf_config, "num_experts", None)
    experts = experts or getattr(hf_config, "n_routed_experts", None)
    tp = args.tensor_parallel_size
    if experts and experts % tp:
        fits = [n for n in range(1, experts + 1) if experts % n == 0]
        raise ValueError(
            f"--enable-expert-parallel over tensor_parallel_size={tp} ranks cannot split the model's {experts} "
            f"experts evenly; use a tensor_parallel_size in {fits}, or leave out --enable-expert-parallel"
        )
    return True


def _attention_spec(hf_config) -> AttentionSpec:
    """The model's attention as the platform must serve it (checked before anything loads)."""
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    window = getattr(hf_config, "sliding_window", None) if getattr(hf_config, "use_sliding_window", True) else None
    heads = hf_config.num_attention_heads
    return AttentionSpec(
        heads,
        getattr(hf_config, "num_key_value_heads", None) or heads,
        head_dim,
        head_dim**-0.5,
        window,
        logits_soft_cap=getattr(hf_config, "attn_logit_softcapping", None),  # Gemma 2
    )


def _scheduler_config(args, platform: Platform) -> SchedulerConfig:
    """The user's limits within the platform's policy: its default token budget, and with
    static shapes never more tokens or requests per step than its largest buckets."""
    policy = platform.scheduling
    batched_tokens = args.max_num_batched_tokens or policy.default_max_num_batched_tokens
    max_seqs = args.max_num_seqs
    if max_seqs < 1 or batched_tokens < 1:
        raise ValueError("max_num_seqs and max_num_batched_tokens must be >= 1")
    if policy.static_shapes is not None:
        batched_tokens = min(batched_tokens, policy.static_shapes.token_buckets[-1])
        max_seqs = min(max_seqs, policy.static_shapes.request_buckets[-1])
    return SchedulerConfig(
        max_num_seqs=max_seqs,
        max_num_batched_tokens=batched_tokens,
        async_scheduling=policy.async_scheduling if args.async_scheduling is None else args.async_scheduling,
        chunked_prefill=policy.chunked_prefill,
        mixed_steps=policy.mixed_steps,
    )


def _model_source(args) -> ModelSource:
    """The model's files (and its separate tokenizer's), checked to be an architecture Octavo runs."""
    if args.load_format not in LOAD_FORMATS:
        raise ValueError(
            f"unknown load_format {args.load_format!r}; choose one of {', '.join(LOAD_FORMATS)} (pt also loads "
            "pickled .bin/.pt weights, which can run code when loaded)"
        )
    hub = {"download_dir": args.download_dir, "hf_token": args.hf_token, "trust_remote_code": args.trust_remote_code}
    source = resolve_model_source(args.model, revision=args.revision, load_format=args.load_format, **hub)
    check_architecture(source)
    if args.tokenizer:
        tokenizer = resolve_model_source(args.tokenizer, revision=args.tokenizer_revision, weights=False, **hub)
        source = dataclasses.replace(source, tokenizer_source=tokenizer)
    return source


def apply_hf_overrides(hf_config, overrides: dict[str, Any] | None, source: ModelSource):
    """`hf_overrides` set over the checkpoint's config, as vLLM sets them. A classifier read
    from the language-model head (`classifier_from_token`: Qwen3-Reranker's ["no", "yes"]) gets
    its tokens' ids here, where the tokenizer is at hand (pooling/from_token.py)."""
    if not overrides:
        return hf_config
    if not isinstance(overrides, dict):
        raise ValueError(f"hf_overrides must be a JSON object of config fields, got {overrides!r}")
    for key, value in overrides.items():
        setattr(hf_config, key, value)
    if getattr(hf_config, "classifier_from_token", None) is not None:
        from octavo.pooling.from_token import resolve_classifier_from_token

        resolve_classifier_from_token(hf_config, load_tokenizer(source))
    return hf_config


def _max_logprobs(value: int) -> int:
    if not 0 <= value <= MAX_LOGPROBS:
        raise ValueError(f"max_logprobs must be in [0, {MAX_LOGPROBS}] (the most Octavo returns), got {value}")
    return value


def _speculative_config(value, platform: Platform):
    """The parsed speculative_config; refused where the platform's runner cannot verify proposals."""
    from octavo.model_runner import ModelRunner
    from octavo.spec_decode import SpeculativeConfig

    config = SpeculativeConfig.parse(value)
    if config is not None and platform.runner_cls is not None and not issubclass(platform.runner_cls, ModelRunner):
        raise ValueError(
            f"speculative decoding is not supported on device {platform.name!r}: its step runner "
            f"({platform.runner_cls.__name__}) does not verify proposed tokens; drop speculative_config"
        )
    return config


def _lora_config(args, platform: Platform):
    """LoRAConfig when enable_lora, refused where the step runner or the parallelism cannot run adapters."""
    from octavo.lora import LoRAConfig
    from octavo.model_runner import ModelRunner

    if not args.enable_lora:
        return None
    if platform.runner_cls is not None and not issubclass(platform.runner_cls, ModelRunner):
        raise ValueError(
            f"LoRA adapters are not supported on device {platform.name!r}: its step runner "
            f"({platform.runner_cls.__name__}) does not apply them; drop enable_lora"
        )
    if args.tensor_parallel_size > 1:
        raise ValueError("LoRA adapters are not supported with tensor parallelism yet; use tensor_parallel_size=1")
    return LoRAConfig(args.max_loras, args.max_lora_rank, args.max_cpu_loras)


def _mm_limits(limits: dict[str, int] | None, hf_config) -> dict[str, int] | None:
    """--limit-mm-per-prompt, checked: a vision-language model's (octavo.multimodal)."""
    if limits is None:
        return None
    from octavo.multimodal.inputs import parse_limits
    from octavo.multimodal.processor import is_multimodal

    if not is_multimodal(hf_config):
        raise ValueError("limit_mm_per_prompt is for vision-language models; this model takes text only")
    return parse_limits(limits)


def create_engine_config(args) -> tuple[EngineConfig, Platform, ModelSource]:
    platform = resolve_platform(args.device)
    source = _model_source(args)
    hf_config = apply_hf_overrides(load_hf_config(source), args.hf_overrides, source)
    generation = load_generation_defaults(
        args.generation_config, None if source.is_gguf else source.directory, args.override_generation_config
    )
    device = platform.device

    dtype = parse_dtype(args.dtype)
    if dtype is None:
        # a GGUF's quantized weights have no dtype of their own: let the platform pick
        dtype = device.default_dtype(None if source.is_gguf else _checkpoint_dtype(hf_config))
    if dtype not in device.supported_dtypes:
        raise ValueError(
            f"dtype {dtype} is not supported on device {platform.name!r}; "
            f"supported: {[str(d).replace('torch.', '') for d in device.supported_dtypes]}"
        )

    # a vision-language model's language model sets the context and the attention (the config itself elsewhere)
    text_config = hf_config.get_text_config()
    limit = getattr(text_config, "max_position_embeddings", None) or 2048
    max_model_len = args.max_model_len or limit
    if max_model_len > limit:
        raise ValueError(f"max_model_len={max_model_len} exceeds the model's max_position_embeddings ({limit})")
    block_size = platform.scheduling.block_size or args.block_size
    if block_size < 1 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two, got {block_size}")
    scheduler = _scheduler_config(args, platform)
    static = platform.scheduling.static_shapes
    if not scheduler.chunked_prefill and scheduler.max_num_batched_tokens < max_model_len:
        fix = "raise --max-num-batched-tokens or lower --max-model-len"
        if static is not None and scheduler.max_num_batched_tokens == static.token_buckets[-1]:
            fix = f"lower --max-model-len (the device compiles steps of at most {static.token_buckets[-1]} tokens)"
        raise ValueError(
            f"device {platform.name!r} runs each prompt in one step, so a step's token budget "
            f"({scheduler.max_num_batched_tokens}) must hold a whole context of max_model_len={max_model_len}: "
            f"{fix}"
        )
    if static is not None and static.block_buckets[-1] * block_size < max_model_len:
        raise ValueError(
            f"device {platform.name!r} compiles block tables of at most {static.block_buckets[-1]} blocks of "
            f"{block_size} tokens, fewer than max_model_len={max_model_len}: lower --max-model-len to "
            f"{static.block_buckets[-1] * block_size} or less"
        )
    _check_tensor_parallel(args.tensor_parallel_size, text_config, platform)
    parallel = _parallel_config(args, hf_config, platform)
    quantization = read_quantization(
        source, hf_config, args.quantization, args.dtype != "auto", dummy=args.load_format == "dummy"
    )
    if quantization is not None and quantization.layers and args.tensor_parallel_size > 1:
        raise ValueError(
            f"tensor parallelism is not supported with quantized weights ({quantization.describe()}); use "
            "tensor_parallel_size=1" + (", or --dtype to load the GGUF file dequantized" if source.is_gguf else "")
        )
    err = platform.attention.supports(_attention_spec(text_config), dtype, block_size)
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
            seed=args.seed if args.seed is not None else 0,
            max_logprobs=_max_logprobs(args.max_logprobs),
            generation=generation,
            quantization=quantization,
            limit_mm_per_prompt=_mm_limits(args.limit_mm_per_prompt, hf_config),
        ),
        cache=CacheConfig(
            block_size=block_size,
            kv_cache_memory=parse_size(args.kv_cache_memory),
            gpu_memory_utilization=args.gpu_memory_utilization,
            enable_prefix_caching=args.enable_prefix_caching,
            num_blocks=args.num_gpu_blocks_override,
        ),
        scheduler=scheduler,
        parallel=parallel,
        device=platform.name,
        enforce_eager=args.enforce_eager,
        lora=_lora_config(args, platform),
        speculative=_speculative_config(args.speculative_config, platform),
    )
    config.parallel.enable_expert_parallel = _expert_parallel(args, hf_config)
    platform.check_and_update_config(config)
    return config, platform, source
